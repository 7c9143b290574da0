"""The on-call runbook, ``state_diagrams/RUNBOOK.md``: how to read the machine, a section per state from
its ``StateDoc`` in ``fsm_cleaner/machine.py``, and what to do when a node has been cordoned for an hour.

Text only: ``fsm_cleaner.diagrams`` builds the machine and its Mermaid diagram and hands them to ``render``,
so the runbook describes the same transitions the agent takes and the drawing shows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING

from .journal import ANNOTATION as JOURNAL_KEY
from .journal import LEGACY_ANNOTATION as LEGACY_KEY
from .machine import StateDoc

if TYPE_CHECKING:
    from .diagrams import Edge

NAME = "fsm-cleaner"
NAMESPACE = "fsm-cleaner"  # the DaemonSet's namespace and name, as deployed
DAEMONSET = "fsm-cleaner"
TEXT_FIELDS = tuple(f.name for f in fields(StateDoc) if f.name != "may_hold_cordon")


def problems(states: Sequence[StateDoc], triggers: Iterable[str], explained: Iterable[str]) -> list[str]:
    """What keeps the runbook from being complete: a state listed twice, a StateDoc text left empty or a
    cordon flag that is not a bool, a trigger (of ``triggers``) that is not ``explained``."""
    out = []
    names = [s.name for s in states]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        out.append(f"state {dup} is listed twice in STATES")
    for s in states:
        for name in TEXT_FIELDS:
            value = getattr(s, name)
            if not isinstance(value, str) or not value.strip():
                out.append(f"state {s.name or '?'}: StateDoc.{name} is empty; every state needs its runbook "
                           "text in fsm_cleaner/machine.py")
        if not isinstance(s.may_hold_cordon, bool):
            out.append(f"state {s.name or '?'}: StateDoc.may_hold_cordon is {s.may_hold_cordon!r}; "
                       "it must be True or False")
    known = set(explained)
    for trigger in sorted(set(triggers) - known):
        out.append(f"trigger {trigger!r} has no entry in fsm_cleaner.diagrams.TRIGGERS")
    return out


def _leaving(state: str, edges: Sequence[Edge]) -> list[str]:
    rows, seen_conditional = [], set()
    for e in edges:
        if e.source != state:
            continue
        if e.conditions:
            condition = " and ".join(f"`{c}`" for c in e.conditions)
            seen_conditional.add(e.trigger)
        else:
            condition = "otherwise" if e.trigger in seen_conditional else "always"
        rows.append(f"| `{e.trigger}` | {condition} | [{e.dest}](#{e.dest.lower()}) |")
    if not rows:
        return ["None: the final state. The DaemonSet starts a new pod, which begins at Starting."]
    return ["| trigger | when | to |", "| --- | --- | --- |", *rows]


def _entering(state: str, edges: Sequence[Edge], initial: str) -> str:
    if state == initial:
        return ("it is the state of a pod that has just started (its age and restarts are in `get pods`); "
                "no transition leads into it")
    seen = []
    for e in edges:
        if e.dest == state and (e.source, e.trigger) not in seen:
            seen.append((e.source, e.trigger))
    lines = ", ".join(f"`{s} -> {state} ({t})`" for s, t in seen)
    return f"the agent's log has {'one of ' if len(seen) > 1 else ''}{lines} when it enters"


def render(states: Sequence[StateDoc], edges: Sequence[Edge], initial: str, triggers: Mapping[str, str],
           mermaid_text: str, svg: str, png: str) -> str:
    """RUNBOOK.md. ``edges``: the built machine's transitions, in its order of precedence; ``triggers``:
    each trigger's meaning; ``mermaid_text`` is embedded, ``svg`` and ``png`` (file names) are linked."""
    trigger_list = "\n".join(f"- `{name}`: {meaning}." for name, meaning in triggers.items())
    status_cmd = "fsm-cleaner status --node-name NODE"
    status_all = "fsm-cleaner status --all"
    jsonpath = f"kubectl get node NODE -o jsonpath='{{.metadata.annotations.{JOURNAL_KEY}}}'"
    legacy_jsonpath = ("kubectl get node NODE -o jsonpath='{.metadata.annotations."
                       + LEGACY_KEY.replace(".", "\\.") + "}'")
    pods = f"kubectl -n {NAMESPACE} get pods -o wide --field-selector spec.nodeName=NODE"
    idle = ('{"state":"Idle","cordoned_by_us":false,"was_unschedulable":false,'
            '"since":"\'"$(date -u +%Y-%m-%dT%H:%M:%SZ)"\'","holder":"on-call"}')
    out = [f"""# {NAME} on-call runbook

<!-- Generated from fsm_cleaner/machine.py by `fsm-cleaner diagrams`: edit the StateDoc entries there, not
this file. -->

## How to read this

{NAME} runs as the DaemonSet `{DAEMONSET}` in the namespace `{NAMESPACE}`, one pod per node. Each pod is a
state machine: it is always in exactly one of the states below and moves only along the arrows. While it
prunes Docker it keeps the node cordoned, and it records where it is in the node's annotation
`{JOURNAL_KEY}`, the *journal*: JSON with `state`, `cordoned_by_us` (the cordon is the agent's own),
`was_unschedulable` (the node was cordoned before the cycle), `since` (UTC) and `holder` (the pod that
wrote it). Whoever comes next, a restarted pod or you, reads it to know what to undo.

The arrows are labelled with a trigger, and a condition in brackets when there is one; for one trigger
and state the first arrow whose condition holds is taken, so "otherwise" below means none of the earlier
conditions held. The triggers:

{trigger_list}

The same diagram in colour, with the failure (`fail`) and stop paths marked:
[{svg}]({svg}) ([PNG]({png})).

Commands used below (NODE is the node's name):

- `{status_cmd}`: the journal, whether the node is schedulable, and the old cleaner's marker. Run it
  where a kubeconfig reaches the cluster, or in any agent pod:
  `kubectl -n {NAMESPACE} exec ds/{DAEMONSET} -- {status_cmd}`.
- `{jsonpath}`: the raw journal. (In kubectl's JSONPath a `/` or `-` in a key needs no escaping; a dot
  does, as `\\.`: the old cleaner's marker `{LEGACY_KEY}` reads as `{legacy_jsonpath}`.)
- `{pods}`: the agent pod on that node; then `kubectl -n {NAMESPACE} logs POD` (`--previous` for the
  one before a restart). The agent logs every transition as `Source -> Dest (trigger) after N s`.

```mermaid
{mermaid_text.rstrip()}
```

## The states
"""]
    for s in states:
        out.append(f"""### {s.name}

- **What the agent is doing:** {s.doing}
- **Normally takes:** {s.takes}.
- **Node cordoned by the agent:** {s.cordoned}.
- **The journal says:** {s.journal}
- **How to see it:** `{status_cmd}` (or the `jsonpath` command above) for the journal;
  {_entering(s.name, edges, initial)}.
- **If the pod dies here:** {s.if_killed}
- **Leaves by:**

{chr(10).join(_leaving(s.name, edges))}

- **If it is stuck here:** {s.if_stuck}
""")
    out.append(f"""## The node has been cordoned for an hour — what now?

No state keeps the node cordoned that long in normal operation (see "Normally takes" above: only a long
PruningAll comes close). Work through these steps in order.

First, the whole cluster at a glance: `{status_all}` prints a line per node (journal state and since
when, whose cordon it is, the cordon slot held) and exits 3, naming on stderr each node that
{NAME} has held cordoned for longer than the limit (`--max-cordoned-for`, default 1h; the journal's
`since` is when its current state began, so the cordon is at least that old). It is the check to run
from cron, and it tells you whether one node is stuck or many: many at once point at the API server
or at a setting, not at one node. It needs `nodes list`, which the agent's ClusterRole has: run it in
any agent pod, `kubectl -n {NAMESPACE} exec ds/{DAEMONSET} -- {status_all}`.

1. **Whose cordon is it?** Run `{status_cmd}` (or `{jsonpath}`).
   - `cordoned by fsm-cleaner: yes` (`"cordoned_by_us":true`): the agent's cordon. Note `state` and
     `since`, then go to step 2.
   - A line `legacy: {LEGACY_KEY} present`: the old docker-image-cleaner
     cordoned it. A starting {NAME} pod undoes that by itself, so no agent has started on that node
     since: go to step 2.
   - `journal: UNREADABLE`: someone wrote a value the agent cannot read, and it leaves the node alone.
     If nobody else claims the cordon (`kubectl describe node NODE`), go on as for the agent's: step 2.
   - Otherwise (no journal, or `cordoned by fsm-cleaner: no`, `"cordoned_by_us":false`): the cordon is
     not the agent's. Someone drained the node, or it was already unschedulable when the cycle began
     (the agent then leaves it so). **Leave it**, and find its owner (`kubectl describe node NODE`).
2. **Is the agent on that node alive and moving?**
   `{pods}`, then `kubectl -n {NAMESPACE} logs POD --tail=50` (add `--previous` if it restarted).
   - Running, and the last log lines are recent (`removed image ...` in PruningAll, transitions): it is
     working. To hand the node back now, stop it the way the agent expects:
     `kubectl -n {NAMESPACE} delete pod POD`. On SIGTERM it stops removing, uncordons and writes Idle
     within STOP_TIMEOUT_SECONDS (25 s), and the DaemonSet starts a new pod. Note that the new pod starts
     a new cycle at once if the disk is still above THRESHOLD_HIGH; to stop cycles everywhere while you
     investigate: `kubectl -n {NAMESPACE} set env ds/{DAEMONSET} FSM_CLEANER_DRY_RUN=true` (every agent
     pod restarts, each handing its node back first).
   - Running, but the log has been silent for longer than the state's "Normally takes" (a step gives up
     after RETRY_TOTAL_SECONDS, 120 s; the uncordon after UNCORDON_RETRY_SECONDS, 600 s): it is stuck.
     Delete the pod as above; if the journal still says `"cordoned_by_us":true` a minute later, step 3.
   - No pod, or Pending, CrashLoopBackOff, or the node NotReady: nobody is going to undo the cordon
     until a pod runs there (one that starts later undoes it by itself, in Reconciling). Step 3.
3. **Uncordon by hand, then tell the journal** (only for the agent's cordon, with no live agent on it).
   First the node, then the journal, in this order:

   ```sh
   kubectl uncordon NODE
   kubectl annotate node NODE --overwrite {JOURNAL_KEY}='{idle}'
   ```

   Or, instead of the second command, delete the journal: `kubectl annotate node NODE {JOURNAL_KEY}-`;
   the agent takes "no journal" as "nothing to undo". Either way the agent does not fight you: a pod
   that starts later finds nothing to undo, and one that was still mid-cycle finds the cordon no longer
   claimed and leaves the node as it is. (The reverse order is wrong: a journal that says Idle while the
   node is still cordoned tells the agent that the cordon is not its own, and nobody lifts it.) If the
   old cleaner's marker is there too, remove it, or a later start would uncordon whatever cordon the node
   has then: `kubectl annotate node NODE {LEGACY_KEY}-`.
4. **Afterwards**, find out why: the pod's log (`--previous`), and the agent's Events on the node
   (Cordoned, Uncordoned, CleanupFailed):
   `kubectl get events -A --field-selector involvedObject.kind=Node,involvedObject.name=NODE`.
""")
    return "\n".join(out)
