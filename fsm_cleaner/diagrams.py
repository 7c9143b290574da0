"""State diagrams and the on-call runbook, rendered from the live machine definition.

`fsm-cleaner diagrams` writes ``state_diagrams/``: ``fsm-cleaner.svg`` and ``.png`` (Graphviz, through
pygraphviz), ``fsm-cleaner.mmd`` (a Mermaid stateDiagram-v2) and ``RUNBOOK.md``. Everything comes from
``fsm_cleaner.machine``: the states and transitions from a ``GraphMachine`` built by ``machine.build`` on a
stand-in model, the text of each runbook section from that state's ``State`` entry.

The output is byte-for-byte the same on every run (no timestamps, no tool versions), so the committed files
can be checked for staleness: ``python -m fsm_cleaner.diagrams --check [DIR]`` (or ``stale(DIR)``).

pygraphviz is needed for SVG and PNG only: ``render_highlighted(state, "x.mmd")`` works without it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from . import machine
from .journal import ANNOTATION as JOURNAL_KEY
from .journal import LEGACY_ANNOTATION as LEGACY_KEY
from .machine import State

TITLE = "fsm-cleaner"
NAMESPACE = "fsm-cleaner"  # the DaemonSet's namespace and name, as deployed
DAEMONSET = "fsm-cleaner"
SVG, PNG, MMD, RUNBOOK = "fsm-cleaner.svg", "fsm-cleaner.png", "fsm-cleaner.mmd", "RUNBOOK.md"
FILES = (SVG, PNG, MMD, RUNBOOK)
REGENERATE = "fsm-cleaner diagrams  (or: python -m fsm_cleaner diagrams --out state_diagrams)"

RANKDIR = "TB"
FONT = "Helvetica,Arial,sans-serif"
PNG_DPI = 110
HIGHLIGHT = "gold"  # fill colour of the highlighted (current) state


@dataclass(frozen=True)
class Trigger:
    meaning: str
    color: str
    style: str  # Graphviz edge style
    penwidth: str
    weight: str  # Graphviz: the heavier, the straighter; the normal flow runs straight down


# Every trigger in machine.TRANSITIONS needs one (runbook_problems checks): the legend and the runbook
# intro are made from these.
TRIGGERS: dict[str, Trigger] = {
    "start": Trigger("the process began; every start goes through Reconciling first, which undoes what a "
                     "dead process left (the recovery path)", "blue3", "bold", "2.5", "4"),
    "tick": Trigger("INTERVAL_SECONDS elapsed in Idle", "black", "solid", "1", "4"),
    "next": Trigger("the state's work is done", "black", "solid", "1", "4"),
    "fail": Trigger("the state's retries ran out (failure path)", "red3", "dashed", "1.8", "1"),
    "stop": Trigger("SIGTERM/SIGINT: hand the node back and stop", "darkorange3", "dotted", "2", "1"),
}
STYLE_WORDS = {"bold": "bold", "solid": "", "dashed": "dashed", "dotted": "dotted"}
COLOR_WORDS = {"blue3": "blue", "black": "black", "red3": "red", "darkorange3": "orange"}


@dataclass(frozen=True)
class Edge:
    trigger: str
    source: str
    dest: str
    conditions: tuple[str, ...]  # "!name" for an `unless`


# --- the live machine ----------------------------------------------------------------------------------
def _graph_machine(engine: str) -> tuple[Any, Any]:
    """A GraphMachine built by machine.build on a model that has every condition (never called)."""
    from transitions.extensions import GraphMachine

    class DiagramMachine(GraphMachine):
        machine_attributes = {"directed": "true", "strict": False, "rankdir": RANKDIR}  # multi-edges

    def never(self: object, *_: object) -> bool:
        return False

    conditions = sorted({c for *_, conds in machine.TRANSITIONS for c in conds})
    model = type("DiagramModel", (), dict.fromkeys(conditions, never))()
    m = machine.build(model, machine_class=DiagramMachine, graph_engine=engine, show_conditions=True,
                      title=TITLE)
    return m, model


def edges(m: Any = None) -> list[Edge]:
    """Every transition of the built machine (default: the diagrams' one), in the machine's order: by
    trigger, then source, then priority."""
    if m is None:
        m, _ = _graph_machine("mermaid")
    out = []
    for trigger, event in m.events.items():
        for source, transitions in event.transitions.items():
            for t in transitions:
                conds = tuple(c.func if c.target else "!" + c.func for c in t.conditions)
                out.append(Edge(trigger, source, t.dest, conds))
    return out


def runbook_problems(states: Sequence[State] | None = None,
                     triggers: Iterable[str] | None = None) -> list[str]:
    """What keeps the runbook from being complete: a State field left empty, a trigger without a legend.
    Defaults: machine.STATES and the triggers of machine.TRANSITIONS."""
    states = machine.STATES if states is None else states
    problems = []
    names = [s.name for s in states]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"state {dup} is listed twice in STATES")
    for s in states:
        for f in fields(State):
            value = getattr(s, f.name)
            if not isinstance(value, str) or not value.strip():
                problems.append(f"state {s.name or '?'}: State.{f.name} is empty; every state needs its "
                                f"runbook text in fsm_cleaner/machine.py")
    for trigger in sorted(set(triggers if triggers is not None else (t[0] for t in machine.TRANSITIONS))):
        if trigger not in TRIGGERS:
            problems.append(f"trigger {trigger!r} has no entry in fsm_cleaner.diagrams.TRIGGERS")
    return problems


def _check_complete() -> None:
    problems = runbook_problems()
    if problems:
        raise ValueError("cannot render the runbook:\n  " + "\n  ".join(problems))


def _note(state: str | None) -> tuple[str | None, str | None]:
    """(state to highlight, note) for render_highlighted."""
    if state is None:
        return None, "current state unknown (no journal)"
    if state not in machine.STATE_NAMES:
        return None, f"current state unknown ({state!r} is not a state of this machine)"
    return state, f"current state {state}"


# --- Mermaid -------------------------------------------------------------------------------------------
_MERMAID_SPECIAL = {c: f"#{ord(c)};" for c in '#:;<>&"'}
_STATE_LINE = re.compile(r'^state "(?P<label>[^"]*)" as (?P<name>\S+)$')
_EDGE_LINE = re.compile(r"^(?P<src>\S+) --> (?P<dst>\S+): (?P<labels>.+)$")


def mermaid_escape(text: str) -> str:
    """Text safe in a Mermaid label: the characters its grammar or HTML would take as syntax become
    entity codes (``#58;`` for ``:``), which Mermaid renders as the character."""
    return "".join(_MERMAID_SPECIAL.get(c, c) for c in text)


def mermaid(highlight: str | None = None, note: str | None = None) -> str:
    """The machine as a Mermaid stateDiagram-v2 (from transitions' mermaid engine, syntax made strict)."""
    m, model = _graph_machine("mermaid")
    source = model.get_graph().draw(None)
    direction, states, lines = "TB", [], []
    for raw in source.splitlines():
        line = raw.strip()
        if line.startswith("direction "):
            direction = line.split()[1]
        elif match := _STATE_LINE.match(line):
            states.append((match["name"], match["label"]))
        elif match := _EDGE_LINE.match(line):
            labels = " | ".join(mermaid_escape(label) for label in match["labels"].split(" | "))
            lines.append(f"{match['src']} --> {match['dst']}: {labels}")
        elif line.startswith("[*] --> "):
            lines.insert(0, line)
        elif not (line in ("", "---", "stateDiagram-v2", TITLE) or line.startswith(("classDef ", "Class "))):
            raise ValueError(f"unexpected line in transitions' Mermaid output: {raw!r}")
    sources = {e.source for e in edges(m)}
    lines += [f"{name} --> [*]" for name, _ in states if name not in sources]  # final states
    title = TITLE if note is None else f"{TITLE}, {note}"
    out = ["---", f"title: {json.dumps(title)}", "---", "stateDiagram-v2", f"    direction {direction}"]
    out += [f'    state "{mermaid_escape(label)}" as {name}' for name, label in states]
    out += [f"    {line}" for line in lines]
    if highlight is not None:
        out += [f"    classDef current fill:{HIGHLIGHT},stroke:darkgoldenrod,stroke-width:3px",
                f"    class {highlight} current"]
    return "\n".join(out) + "\n"


# --- Graphviz ------------------------------------------------------------------------------------------
def _pygraphviz() -> None:
    try:
        import pygraphviz  # noqa: F401
    except ImportError:
        raise RuntimeError("SVG and PNG need pygraphviz: pip install 'fsm-cleaner[diagrams]' "
                           "(Mermaid .mmd does not)") from None


def _legend(note: str | None) -> str:
    def esc(text: str) -> str:
        return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    rows = [f'<tr><td align="left"><b>{esc(TITLE)}</b>: the agent\'s state machine, from '
            "fsm_cleaner/machine.py (on-call: state_diagrams/RUNBOOK.md)</td></tr>"]
    if note:
        rows.append(f'<tr><td align="left"><font color="darkgoldenrod"><b>{esc(note)}</b></font></td></tr>')
    for name, t in TRIGGERS.items():
        words = (COLOR_WORDS.get(t.color, t.color), STYLE_WORDS.get(t.style, t.style))
        look = " ".join(w for w in words if w)
        rows.append(f'<tr><td align="left"><font color="{t.color}"><b>{name}</b> ({look})</font>: '
                    f"{esc(t.meaning)}</td></tr>")
    return '<<table border="0" cellspacing="1" cellpadding="1">' + "".join(rows) + "</table>>"


def agraph(highlight: str | None = None, note: str | None = None) -> Any:
    """The machine as a pygraphviz AGraph: transitions' graph, one edge per trigger, styled by trigger."""
    _pygraphviz()
    m, model = _graph_machine("pygraphviz")
    g = model.get_graph()
    inactive = m.style_attributes["node"]["inactive"]
    g.graph_attr.update(rankdir=RANKDIR, fontname=FONT, fontsize="11", labelloc="b", labeljust="l",
                        nodesep="0.35", ranksep="0.4", pad="0.2", label=_legend(note))
    g.node_attr.update(fontname=FONT, fontsize="12", margin="0.15,0.06", height="0.4")
    g.edge_attr.update(fontname=FONT, fontsize="10", arrowsize="0.7")
    for node in g.nodes():
        node.attr.update(inactive)  # the stand-in model sits in Starting: no "active" state here
        node.attr.update(label=str(node), id=str(node))
    if highlight is not None:
        g.get_node(highlight).attr.update(fillcolor=HIGHLIGHT, color="darkgoldenrod", penwidth="3",
                                          peripheries="1")
    merged = [(str(e[0]), str(e[1]), e.attr["label"]) for e in g.edges()]
    g.delete_edges_from(g.edges())
    for src, dst, labels in merged:  # transitions joins the labels of one (source, dest) with " | "
        for label in labels.split(" | "):
            trigger = label.split(" ", 1)[0]
            t = TRIGGERS[trigger]
            g.add_edge(src, dst, key=f"{src}.{trigger}.{dst}", id=f"{src}.{trigger}.{dst}", label=label,
                       color=t.color, fontcolor=t.color, style=t.style, penwidth=t.penwidth, weight=t.weight)
    return g


def svg(g: Any) -> bytes:
    out = g.draw(format="svg", prog="dot").decode()
    out = re.sub(r"<!-- Generated by graphviz version .*?-->\n", "", out, count=1, flags=re.S)
    return out.encode()


def png(g: Any) -> bytes:
    return g.draw(format="png", prog="dot", args=f"-Gdpi={PNG_DPI}")


# --- the runbook ---------------------------------------------------------------------------------------
def _leaving(state: str, all_edges: list[Edge]) -> list[str]:
    rows, seen_conditional = [], set()
    for e in all_edges:
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


def _entering(state: str, all_edges: list[Edge], initial: str) -> str:
    if state == initial:
        return ("it is the state of a pod that has just started (its age and restarts are in `get pods`); "
                "no transition leads into it")
    seen = []
    for e in all_edges:
        if e.dest == state and (e.source, e.trigger) not in seen:
            seen.append((e.source, e.trigger))
    lines = ", ".join(f"`{s} -> {state} ({t})`" for s, t in seen)
    return f"the agent's log has {'one of ' if len(seen) > 1 else ''}{lines} when it enters"


def runbook(mermaid_text: str) -> str:
    _check_complete()
    m, _ = _graph_machine("mermaid")
    all_edges, initial = edges(m), m.initial
    triggers = "\n".join(f"- `{name}`: {t.meaning}." for name, t in TRIGGERS.items())
    status_cmd = "fsm-cleaner status --node-name NODE"
    jsonpath = f"kubectl get node NODE -o jsonpath='{{.metadata.annotations.{JOURNAL_KEY}}}'"
    legacy_jsonpath = ("kubectl get node NODE -o jsonpath='{.metadata.annotations."
                       + LEGACY_KEY.replace(".", "\\.") + "}'")
    pods = f"kubectl -n {NAMESPACE} get pods -o wide --field-selector spec.nodeName=NODE"
    idle = ('{"state":"Idle","cordoned_by_us":false,"was_unschedulable":false,'
            '"since":"\'"$(date -u +%Y-%m-%dT%H:%M:%SZ)"\'","holder":"on-call"}')
    out = [f"""# {TITLE} on-call runbook

<!-- Generated from fsm_cleaner/machine.py by `fsm-cleaner diagrams`: edit the State entries there, not
this file. -->

## How to read this

{TITLE} runs as the DaemonSet `{DAEMONSET}` in the namespace `{NAMESPACE}`, one pod per node. Each pod is a
state machine: it is always in exactly one of the states below and moves only along the arrows. While it
prunes Docker it keeps the node cordoned, and it records where it is in the node's annotation
`{JOURNAL_KEY}`, the *journal*: JSON with `state`, `cordoned_by_us` (the cordon is the agent's own),
`was_unschedulable` (the node was cordoned before the cycle), `since` (UTC) and `holder` (the pod that
wrote it). Whoever comes next, a restarted pod or you, reads it to know what to undo.

The arrows are labelled with a trigger, and a condition in brackets when there is one; for one trigger
and state the first arrow whose condition holds is taken, so "otherwise" below means none of the earlier
conditions held. The triggers:

{triggers}

The same diagram in colour, with the failure (`fail`) and stop paths marked:
[{SVG}]({SVG}) ([PNG]({PNG})).

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
    for s in machine.STATES:
        out.append(f"""### {s.name}

- **What the agent is doing:** {s.doing}
- **Normally takes:** {s.takes}.
- **Node cordoned by the agent:** {s.cordoned}.
- **The journal says:** {s.journal}
- **How to see it:** `{status_cmd}` (or the `jsonpath` command above) for the journal;
  {_entering(s.name, all_edges, initial)}.
- **If the pod dies here:** {s.if_killed}
- **Leaves by:**

{chr(10).join(_leaving(s.name, all_edges))}

- **If it is stuck here:** {s.if_stuck}
""")
    out.append(f"""## The node has been cordoned for an hour — what now?

No state keeps the node cordoned that long in normal operation (see "Normally takes" above: only a long
PruningAll comes close). Work through these steps in order.

1. **Whose cordon is it?** Run `{status_cmd}` (or `{jsonpath}`).
   - `cordoned by fsm-cleaner: yes` (`"cordoned_by_us":true`): the agent's cordon. Note `state` and
     `since`, then go to step 2.
   - A line `legacy: {LEGACY_KEY} present`: the old docker-image-cleaner
     cordoned it. A starting {TITLE} pod undoes that by itself, so no agent has started on that node
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


# --- files ---------------------------------------------------------------------------------------------
def render_all(out_dir: str | Path) -> list[Path]:
    """Write the SVG, PNG, Mermaid and RUNBOOK.md into out_dir; return their paths."""
    _check_complete()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    g = agraph()
    text = mermaid()
    contents = {SVG: svg(g), PNG: png(g), MMD: text.encode(), RUNBOOK: runbook(text).encode()}
    paths = []
    for name in FILES:
        path = out / name
        path.write_bytes(contents[name])
        paths.append(path)
    return paths


def render_highlighted(state: str | None, path: str | Path) -> Path:
    """The diagram with ``state`` highlighted, in the format of path's extension (.svg, .png, .mmd).
    None or a name that is not a state gives the plain diagram with a note saying so."""
    path = Path(path)
    highlight, note = _note(state)
    ext = path.suffix.lower()
    if ext == ".mmd":
        data = mermaid(highlight, note).encode()
    elif ext in (".svg", ".png"):
        g = agraph(highlight, note)
        data = svg(g) if ext == ".svg" else png(g)
    else:
        raise ValueError(f"{path}: unknown diagram format {ext or '(none)'}; accepted: .svg, .png, .mmd")
    path.write_bytes(data)
    return path


_GEOMETRY = re.compile(rb'\b(points|x|y|cx|cy|rx|ry|width|height|viewBox|transform|d)="[^"]*"')


def _same_content(a: bytes, b: bytes) -> bool:
    """SVGs equal but for coordinates (another Graphviz build or other fonts lay the same graph out
    slightly differently)."""
    return _GEOMETRY.sub(rb'\1=""', a) == _GEOMETRY.sub(rb'\1=""', b)


def stale(directory: str | Path = "state_diagrams") -> list[str]:
    """Regenerate into a temporary folder and compare with ``directory``; one line per stale file.

    The text files must match byte for byte. So must the SVG; one that differs only in coordinates comes
    from another Graphviz build or other fonts, and counts as current (the PNG is then not compared,
    only checked to be a PNG: its pixels depend on the renderer too)."""
    directory = Path(directory)
    problems = []
    same_renderer = True
    with tempfile.TemporaryDirectory() as tmp:
        for fresh in render_all(tmp):
            committed = directory / fresh.name
            if not committed.is_file():
                problems.append(f"{committed} is missing")
                continue
            new, old = fresh.read_bytes(), committed.read_bytes()
            if new == old:
                continue
            if fresh.name == SVG and _same_content(new, old):
                same_renderer = False
            elif fresh.name == PNG and not same_renderer:
                if not old.startswith(b"\x89PNG\r\n\x1a\n"):
                    problems.append(f"{committed} is not a PNG")
            else:
                problems.append(f"{committed} is out of date with fsm_cleaner/machine.py and "
                                "fsm_cleaner/diagrams.py")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fsm_cleaner.diagrams",
                                description="Render state_diagrams/ from the machine, or check it.")
    p.add_argument("--out", default="state_diagrams", help="output folder (default: %(default)s)")
    p.add_argument("--check", nargs="?", const="state_diagrams", metavar="DIR",
                   help="exit 1 if DIR (default: state_diagrams) is not what rendering gives now")
    args = p.parse_args(argv)
    if args.check is not None:
        problems = stale(args.check)
        if problems:
            print("\n".join(problems), file=sys.stderr)
            print(f"regenerate with: {REGENERATE}, and commit the result", file=sys.stderr)
            return 1
        print(f"{args.check}: up to date")
        return 0
    for path in render_all(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
