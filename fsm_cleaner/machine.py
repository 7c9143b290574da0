"""The state machine: states (with their runbook text) and transitions, in one table each.

This module is the single source of truth: the agent is built from it, and `fsm-cleaner diagrams`
renders the diagrams and the on-call runbook from it. Triggers:
  start  the process began       tick  the interval elapsed      next  the state's work is done
  fail   the state's retries ran out                               stop  SIGTERM/SIGINT
Conditions are methods of the agent, named after what they check.
"""

from __future__ import annotations

from dataclasses import dataclass

from transitions import Machine


@dataclass(frozen=True)
class State:
    name: str
    doing: str  # what the agent is doing
    takes: str  # how long it normally takes
    cordoned: str  # is the node cordoned by the agent in this state
    if_killed: str  # what happens when the pod dies here
    if_stuck: str  # what to do by hand
    journal: str  # what the node's journal annotation (`fsm-cleaner status`) says in this state


STATES: tuple[State, ...] = (
    State("Starting", "The process has started and has not yet read the node.", "milliseconds",
          "no (a previous process may have left it cordoned; Reconciling checks)",
          "Nothing to undo.", "If the pod crash-loops, read its logs: a configuration error exits 2 "
          "and names the setting.",
          "Unchanged: what the previous process left (none on a node never cleaned)."),
    State("Reconciling", "Reading the node's journal annotation and undoing what a previous process "
          "(or docker-image-cleaner) left: uncordon if it cordoned, mark the journal Idle.",
          "under a second; up to UNCORDON_RETRY_SECONDS while the API server is unreachable",
          "possibly, by a previous process; this state removes that cordon",
          "The next start reconciles again; nothing is lost.",
          "If the journal is unreadable the agent leaves the node alone and logs the raw value: check "
          "`fsm-cleaner status`, then uncordon by hand if no cycle is running (see Uncordoning).",
          "What the previous process left; Idle once its unfinished cycle is undone."),
    State("Idle", "Waiting INTERVAL_SECONDS until the next measurement.", "INTERVAL_SECONDS (300 s)",
          "no", "Nothing to undo.", "Nothing to do: the agent is healthy while its heartbeat is fresh.",
          "Idle (none if no cycle ever ran on this node)."),
    State("Measuring", "Measuring the usage of PATH_TO_CHECK (percent of blocks or inodes, "
          "or bytes in absolute mode); above the high threshold, checking that Docker answers before "
          "anything is cordoned.", "milliseconds (relative); seconds to minutes (absolute, du)",
          "no", "Nothing to undo; not journaled on the node.",
          "A slow absolute measurement is a large tree: prefer the relative mode. 'Measuring failed' "
          "with a Docker error: the daemon is down; the node is left alone until it answers.",
          "Not written: still Idle (or none). Measuring changes nothing on the node."),
    State("Cordoning", "One PATCH: spec.unschedulable=true and the journal (who cordoned, was the "
          "node already unschedulable), conditional on the node's resourceVersion.",
          "under a second", "becoming so (only if it was schedulable before)",
          "The journal says Cordoning: the next start uncordons if the cordon was ours.",
          "If the API server rejects the PATCH (RBAC), the agent goes to Uncordoning and logs it.",
          "Idle until the PATCH lands, then Cordoning (cordoned_by_us false if the node was "
          "unschedulable already; an unreadable journal on an unschedulable node is left as found)."),
    State("PruningContainers", "Removing stopped containers (docker container prune).",
          "seconds", "yes, if the node was schedulable before the cycle",
          "The next start uncordons (journal says PruningContainers).",
          "Check the Docker daemon (`docker info` on the node); after the retries run out the agent "
          "uncordons by itself.",
          "PruningContainers (cordoned_by_us carried over from Cordoning)."),
    State("PruningDangling", "Removing dangling (untagged) images (docker image prune).",
          "seconds to a minute", "yes, if the node was schedulable before the cycle",
          "The next start uncordons (journal says PruningDangling).",
          "As for PruningContainers.",
          "PruningDangling."),
    State("PruningAll", "Removing images no container uses, oldest first, one at a time with "
          "DELAY_SECONDS between them, until usage is at or below the target.",
          "seconds to minutes (one image per DELAY_SECONDS)", "yes, if the node was schedulable "
          "before the cycle", "The next start uncordons (journal says PruningAll).",
          "Long runs mean many images: lower DELAY_SECONDS or set THRESHOLD_LOW closer to "
          "THRESHOLD_HIGH. The agent stops removing and uncordons on SIGTERM.",
          "PruningAll, since = when the removals began (it is not rewritten per image)."),
    State("Uncordoning", "One PATCH: spec.unschedulable=false (only if the agent set it and nobody "
          "undid it) and the journal back to Idle. Retries with the most patience of all.",
          "under a second; up to UNCORDON_RETRY_SECONDS while the API server is unreachable",
          "yes, until the PATCH lands", "The next start uncordons (journal still says the "
          "previous step).", "If the API server is down the agent keeps trying; once it is back "
          "the node is uncordoned. To uncordon by hand, see below.",
          "The step it came from until the PATCH lands, then Idle."),
    State("Stopped", "The process received SIGTERM/SIGINT and handed the node back.", "final",
          "no", "Already stopped.", "Nothing to do.",
          "Idle; still the cycle's step if the last uncordon failed (the next start undoes it)."),
)

PRUNING = ["PruningContainers", "PruningDangling", "PruningAll"]

# trigger, source(s), destination, conditions (all must hold); for one trigger and source the first
# row whose conditions hold wins.
TRANSITIONS: tuple[tuple[str, str | list[str], str, list[str]], ...] = (
    ("start", "Starting", "Reconciling", []),
    ("next", "Reconciling", "Idle", []),
    ("fail", "Reconciling", "Idle", []),
    ("tick", "Idle", "Uncordoning", ["owes_uncordon"]),
    ("tick", "Idle", "Measuring", []),
    ("next", "Measuring", "Cordoning", ["above_high_threshold"]),
    ("next", "Measuring", "Idle", []),
    ("fail", "Measuring", "Idle", []),
    ("next", "Cordoning", "PruningContainers", []),
    ("next", "PruningContainers", "PruningDangling", []),
    ("next", "PruningDangling", "Uncordoning", ["dangling_freed_enough"]),
    ("next", "PruningDangling", "PruningAll", []),
    ("next", "PruningAll", "Uncordoning", []),
    ("fail", ["Cordoning", *PRUNING], "Uncordoning", []),
    ("stop", ["Cordoning", *PRUNING], "Uncordoning", []),
    ("next", "Uncordoning", "Stopped", ["stopping"]),
    ("next", "Uncordoning", "Idle", []),
    ("fail", "Uncordoning", "Stopped", ["stopping"]),
    ("fail", "Uncordoning", "Idle", []),
    ("stop", ["Starting", "Reconciling", "Idle", "Measuring"], "Stopped", []),
)

STATE_NAMES = [s.name for s in STATES]


def transitions_config() -> list[dict]:
    return [{"trigger": t, "source": s, "dest": d, "conditions": c} for t, s, d, c in TRANSITIONS]


def build(model: object, machine_class: type[Machine] = Machine, **kwargs: object) -> Machine:
    """Attach the machine to ``model`` (which provides on_enter_<State> and the conditions)."""
    return machine_class(
        model=model,
        states=STATE_NAMES,
        transitions=transitions_config(),
        initial="Starting",
        auto_transitions=False,
        send_event=True,
        **kwargs,
    )
