"""The state machine: states (with their runbook text) and transitions, in one table each.

This module is the single source of truth: the agent is built from it, and `fsm-cleaner diagrams`
renders the diagrams and the on-call runbook from it. Triggers:
  start  the process began       tick  the interval elapsed      next  the state's work is done
  fail   the state's retries ran out      stop  SIGTERM, SIGINT or SIGHUP (SIGUSR1/SIGUSR2 are ignored)
Conditions are methods of the agent, named after what they check.
"""

from __future__ import annotations

from dataclasses import dataclass

from transitions import Machine


@dataclass(frozen=True, kw_only=True)
class StateDoc:
    """One state of the machine and its on-call runbook text (every field is rendered into RUNBOOK.md)."""

    name: str
    may_hold_cordon: bool  # the agent may hold the node cordoned here: the diagrams box these states
    doing: str  # what the agent is doing
    takes: str  # how long it normally takes
    cordoned: str  # is the node cordoned by the agent in this state, in words
    if_killed: str  # what happens when the pod dies here
    if_stuck: str  # what to do by hand
    journal: str  # what the node's journal annotation (`fsm-cleaner status`) says in this state


STATES: tuple[StateDoc, ...] = (
    StateDoc(
        name="Starting",
        may_hold_cordon=False,
        doing="The process has started and has not yet read the node.",
        takes="milliseconds",
        cordoned="no (a previous process may have left it cordoned; Reconciling checks)",
        if_killed="Nothing to undo.",
        if_stuck="If the pod crash-loops, read its logs: a configuration error exits 2 and names the "
                 "setting.",
        journal="Unchanged: what the previous process left (none on a node never cleaned).",
    ),
    StateDoc(
        name="Reconciling",
        may_hold_cordon=False,
        doing="Reading the node's journal annotation and undoing what a previous process "
              "(or docker-image-cleaner) left: uncordon if it cordoned, mark the journal Idle, free this "
              "node's cordon slot.",
        takes="under a second; up to UNCORDON_RETRY_SECONDS while the API server is unreachable",
        cordoned="possibly, by a previous process; this state removes that cordon",
        if_killed="The next start reconciles again; nothing is lost.",
        if_stuck="If the journal is unreadable the agent leaves the node alone and logs the raw value: check "
                 "`fsm-cleaner status`, then uncordon by hand if no cycle is running (see Uncordoning).",
        journal="What the previous process left; Idle once its unfinished cycle is undone.",
    ),
    StateDoc(
        name="Idle",
        may_hold_cordon=False,
        doing="Waiting INTERVAL_SECONDS until the next measurement.",
        takes="INTERVAL_SECONDS (300 s)",
        cordoned="no",
        if_killed="Nothing to undo.",
        if_stuck="Nothing to do: the agent is healthy while its heartbeat is fresh.",
        journal="Idle (none if no cycle ever ran on this node).",
    ),
    StateDoc(
        name="Measuring",
        may_hold_cordon=False,
        doing="Measuring the usage of PATH_TO_CHECK (percent of blocks or inodes, or bytes in absolute "
              "mode); above the high threshold, checking that Docker answers before anything is cordoned.",
        takes="milliseconds (relative); seconds to minutes (absolute, du)",
        cordoned="no",
        if_killed="Nothing to undo; not journaled on the node.",
        if_stuck="A slow absolute measurement is a large tree: prefer the relative mode. 'Measuring failed' "
                 "with a Docker error: the daemon is down; the node is left alone until it answers.",
        journal="Not written: still Idle (or none). Measuring changes nothing on the node.",
    ),
    StateDoc(
        name="TakingSlot",
        may_hold_cordon=True,
        doing="Journaling the cycle (TakingSlot) on the node, then taking one of the MAX_CORDONED cordon "
              "slots: Leases fsm-cleaner-slot-<i> in NAMESPACE, each written conditionally on its "
              "resourceVersion. No slot free: the cycle goes on without a cordon and removes only what "
              "needs none (stopped containers, dangling images, build cache); images wait for a slot at a "
              "later tick. Above CRITICAL_THRESHOLD it removes images too, uncordoned (Event "
              "CleaningWithoutCordon). With CORDON=false no slot is taken and no cycle cordons.",
        takes="under a second",
        cordoned="not by this cycle yet; still so if a dead agent's cordon was taken over with its journal",
        if_killed="The journal says TakingSlot: the next start frees this node's slot; with no restart (node "
                  "gone) the slot frees itself SLOT_LEASE_SECONDS after its last renewal.",
        if_stuck="`kubectl -n NAMESPACE get leases -l app.kubernetes.io/name=fsm-cleaner` shows the holders "
                 "(holderIdentity: a node). A node waiting long for a slot: `fsm-cleaner status --all` shows "
                 "which nodes hold them and since when; raise MAX_CORDONED, or free a dead holder's slot by "
                 "deleting its Lease. 403 on leases: the Role of deploy/base is missing.",
        journal="TakingSlot, cordoned_by_us false, no slot yet (the slot is named from Cordoning on).",
    ),
    StateDoc(
        name="Cordoning",
        may_hold_cordon=True,
        doing="One PATCH: spec.unschedulable=true and the journal (who cordoned, was the node already "
              "unschedulable, which slot it holds), conditional on what was read of the node.",
        takes="under a second",
        cordoned="becoming so (only if it was schedulable before)",
        if_killed="The journal says Cordoning: the next start uncordons if the cordon was ours.",
        if_stuck="If the API server rejects the PATCH (RBAC), the agent goes to Uncordoning and logs it.",
        journal="Idle until the PATCH lands, then Cordoning (cordoned_by_us false if the node was "
                "unschedulable already; an unreadable journal on an unschedulable node is left as found).",
    ),
    StateDoc(
        name="PruningContainers",
        may_hold_cordon=True,
        doing="Removing stopped containers (docker container prune); then, with BLOCKING_POD_SELECTOR set, "
              "listing the pods on the node that it names: while one is Running or Pending (and usage is "
              "below the critical level) images, dangling images and build cache stay, and the cycle ends "
              "here (log line `waiting: pod ...`, Event RemovalsDeferred).",
        takes="seconds",
        cordoned="yes, if the node was schedulable before the cycle",
        if_killed="The next start uncordons (journal says PruningContainers).",
        if_stuck="Check the Docker daemon (`docker info` on the node); after the retries run out the agent "
                 "uncordons by itself. `PodsForbidden`: BLOCKING_POD_SELECTOR is set but the RBAC of "
                 "deploy/components/blocking-pods is not installed. A node that cleans nothing but "
                 "containers, cycle after cycle, has a blocking pod that never ends: find it with "
                 "`kubectl get pods -A -l SELECTOR --field-selector spec.nodeName=NODE`.",
        journal="PruningContainers (cordoned_by_us carried over from Cordoning).",
    ),
    StateDoc(
        name="PruningDangling",
        may_hold_cordon=True,
        doing="Removing dangling (untagged) images created more than MIN_AGE ago (docker image prune "
              "--filter until=MIN_AGE). Younger ones stay: a build in progress commits each step as an "
              "untagged image, dangling until the build tags its result, and pruning it would break the "
              "build.",
        takes="seconds to a minute",
        cordoned="yes, if the node was schedulable before the cycle",
        if_killed="The next start uncordons (journal says PruningDangling).",
        if_stuck="As for PruningContainers. Dangling images that stay are younger than MIN_AGE "
                 "(`docker images -f dangling=true` shows their age); the next cycle takes them.",
        journal="PruningDangling.",
    ),
    StateDoc(
        name="PruningBuildCache",
        may_hold_cordon=True,
        doing="Removing BuildKit build cache entries (docker builder prune without --all): only those no "
              "build uses, no image shares and nobody used for MIN_AGE, least recently used first, until "
              "the cache fits BUILD_CACHE_MAX (unset: every such entry). Skipped, with one log line per "
              "process, on a runtime without the endpoint (Podman).",
        takes="seconds (one Docker call)",
        cordoned="yes, if the node was schedulable before the cycle",
        if_killed="The next start uncordons (journal says PruningBuildCache). A prune cut short leaves "
                  "some entries: the daemon removes each one whole, and the next cycle prunes the rest.",
        if_stuck="`docker system df -v` on the node lists the cache; `docker builder prune --filter "
                 "until=30m` does by hand what this state does. A 'prune operation is already running' "
                 "answer is retried; after the retries run out the agent uncordons by itself.",
        journal="PruningBuildCache.",
    ),
    StateDoc(
        name="PruningAll",
        may_hold_cordon=True,
        doing="Removing images by a plan made first (one /system/df listing and the use history in "
              "STATE_DIR): dangling, then superseded by a newer image of the same repository, then the "
              "least likely needed (uses / sqrt(hours idle + 0.5)), children before parents, one at a time "
              "with DELAY_SECONDS between them, until usage is at or below THRESHOLD_LOW (unset: every image "
              "that may go). Never removed: an image a container uses, one younger than MIN_AGE, one "
              "matching KEEP, the parents of these. Each removal is logged with its reason, and what "
              "stays in one line of counts by reason.",
        takes="seconds to minutes (one image per DELAY_SECONDS; /system/df can take seconds on a large "
              "store)",
        cordoned="yes, if the node was schedulable before the cycle",
        if_killed="The next start uncordons (journal says PruningAll). The use history is saved before "
                  "stopped containers are pruned and every 30 s, atomically: a kill leaves the old file or "
                  "the new one.",
        if_stuck="Long runs mean many images: lower DELAY_SECONDS or set THRESHOLD_LOW closer to "
                 "THRESHOLD_HIGH. The agent stops removing and uncordons on SIGTERM, SIGINT or SIGHUP. "
                 "The warning 'still above the target ... nothing else may go' names what holds the rest "
                 "(in use, too young, kept): lower MIN_AGE or shorten KEEP, or the disk is simply too "
                 "small for what runs on it.",
        journal="PruningAll, since = when the removals began (it is not rewritten per image).",
    ),
    StateDoc(
        name="Uncordoning",
        may_hold_cordon=True,
        doing="One PATCH: spec.unschedulable=false (only if the agent set it and nobody undid it) and the "
              "journal back to Idle; once it has landed, the cordon slot is freed. Retries with the most "
              "patience of all.",
        takes="under a second; up to UNCORDON_RETRY_SECONDS while the API server is unreachable",
        cordoned="yes, until the PATCH lands",
        if_killed="The next start uncordons (journal still says the previous step).",
        if_stuck="If the API server is down the agent keeps trying; once it is back the node is uncordoned. "
                 "To uncordon by hand, see below.",
        journal="The step it came from until the PATCH lands, then Idle.",
    ),
    StateDoc(
        name="Stopped",
        may_hold_cordon=False,
        doing="The process received SIGTERM, SIGINT or SIGHUP and handed the node back (SIGUSR1 and "
              "SIGUSR2 are ignored).",
        takes="final",
        cordoned="no",
        if_killed="Already stopped.",
        if_stuck="Nothing to do.",
        journal="Idle; still the cycle's step if the last uncordon failed (the next start undoes it).",
    ),
)

PRUNING = ["PruningContainers", "PruningDangling", "PruningBuildCache", "PruningAll"]

# trigger, source(s), destination, conditions (all must hold); for one trigger and source the first
# row whose conditions hold wins.
TRANSITIONS: tuple[tuple[str, str | list[str], str, list[str]], ...] = (
    ("start", "Starting", "Reconciling", []),
    ("next", "Reconciling", "Idle", []),
    ("fail", "Reconciling", "Idle", []),
    ("tick", "Idle", "Uncordoning", ["owes_uncordon"]),
    ("tick", "Idle", "Measuring", []),
    ("next", "Measuring", "TakingSlot", ["above_high_threshold"]),
    ("next", "Measuring", "Idle", []),
    ("fail", "Measuring", "Idle", []),
    ("next", "TakingSlot", "Cordoning", ["slot_granted"]),
    ("next", "TakingSlot", "PruningContainers", []),
    ("next", "Cordoning", "PruningContainers", []),
    ("next", "PruningContainers", "Uncordoning", ["removals_blocked"]),
    ("next", "PruningContainers", "PruningDangling", []),
    ("next", "PruningDangling", "PruningBuildCache", []),
    ("next", "PruningBuildCache", "Uncordoning", ["freed_enough"]),
    ("next", "PruningBuildCache", "Uncordoning", ["waiting_for_slot"]),
    ("next", "PruningBuildCache", "PruningAll", []),
    ("next", "PruningAll", "Uncordoning", []),
    ("fail", ["TakingSlot", "Cordoning", *PRUNING], "Uncordoning", []),
    ("stop", ["TakingSlot", "Cordoning", *PRUNING], "Uncordoning", []),
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
