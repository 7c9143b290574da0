"""State diagrams rendered from the live machine definition, and the files of ``state_diagrams/``.

`fsm-cleaner diagrams` writes ``state_diagrams/``: ``fsm-cleaner.svg`` and ``.png`` (Graphviz, through
pygraphviz), ``fsm-cleaner.mmd`` (a Mermaid stateDiagram-v2) and ``RUNBOOK.md`` (text by
``fsm_cleaner.runbook``). The states and transitions come from a ``GraphMachine`` built by ``machine.build``
on a stand-in model; the states whose ``StateDoc.may_hold_cordon`` is set are drawn in one box, so that the
on-call question "can this cordon be fsm-cleaner's?" is answered at a glance.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import machine, runbook

TITLE = "fsm-cleaner"
SVG, PNG, MMD, RUNBOOK = "fsm-cleaner.svg", "fsm-cleaner.png", "fsm-cleaner.mmd", "RUNBOOK.md"
FILES = (SVG, PNG, MMD, RUNBOOK)
REGENERATE = "fsm-cleaner diagrams  (or: python -m fsm_cleaner diagrams --out state_diagrams)"
CORDON_BOX = "node may be cordoned by fsm-cleaner"  # the label of the box around the may_hold_cordon states
CORDON_BOX_ID = "MayHoldCordon"  # its name in Mermaid; in Graphviz "cluster_" + this

RANKDIR = "TB"
FONT = "Helvetica,Arial,sans-serif"
PNG_DPI = 110
HIGHLIGHT = "gold"  # fill colour of the highlighted (current) state
BOX_COLOR, BOX_FILL = "steelblue4", "aliceblue"  # the CORDON_BOX: no trigger's colour, not the highlight's
BESIDE_FINAL = "Idle"  # the final state is drawn level with it, so the stop edges stay short


@dataclass(frozen=True)
class Trigger:
    meaning: str
    color: str
    style: str  # Graphviz edge style
    penwidth: str
    weight: str  # Graphviz: the heavier, the straighter; the normal flow runs straight down


# Every trigger in machine.TRANSITIONS needs one (runbook.problems checks): the legend and the runbook
# intro are made from these.
TRIGGERS: dict[str, Trigger] = {
    "start": Trigger("the process began; every start goes through Reconciling first, which undoes what a "
                     "dead process left (the recovery path)", "blue3", "bold", "2.5", "4"),
    "tick": Trigger("INTERVAL_SECONDS elapsed in Idle", "black", "solid", "1", "4"),
    "next": Trigger("the state's work is done", "black", "solid", "1", "4"),
    "fail": Trigger("the state's retries ran out (failure path)", "red3", "dashed", "1.8", "1"),
    "stop": Trigger("SIGTERM/SIGINT/SIGHUP: hand the node back and stop", "darkorange3", "dotted", "2", "1"),
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


def _check_complete() -> None:
    triggers = [t[0] for t in machine.TRANSITIONS]
    problems = runbook.problems(machine.STATES, triggers, TRIGGERS)
    if problems:
        raise ValueError("cannot render the runbook:\n  " + "\n  ".join(problems))


def _cordon_states() -> dict[str, None]:
    """The states drawn in the CORDON_BOX, in machine order (a dict: ordered, and fast to test)."""
    return dict.fromkeys(s.name for s in machine.STATES if s.may_hold_cordon)


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
    """The machine as a Mermaid stateDiagram-v2 (from transitions' mermaid engine, syntax made strict), the
    may_hold_cordon states and the transitions among them inside a composite state labelled CORDON_BOX."""
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
            lines.append((match["src"], match["dst"], f"{match['src']} --> {match['dst']}: {labels}"))
        elif line.startswith("[*] --> "):
            lines.insert(0, ("[*]", line.split()[-1], line))
        elif not (line in ("", "---", "stateDiagram-v2", TITLE) or line.startswith(("classDef ", "Class "))):
            raise ValueError(f"unexpected line in transitions' Mermaid output: {raw!r}")
    sources = {e.source for e in edges(m)}
    lines += [(name, "[*]", f"{name} --> [*]") for name, _ in states if name not in sources]  # final states
    boxed = _cordon_states()
    first_boxed = next(iter(boxed), None)
    title = TITLE if note is None else f"{TITLE}, {note}"
    out = ["---", f"title: {json.dumps(title)}", "---", "stateDiagram-v2", f"    direction {direction}"]
    box = [f'    state "{mermaid_escape(CORDON_BOX)}" as {CORDON_BOX_ID} {{']
    box += [f'        state "{mermaid_escape(label)}" as {name}' for name, label in states if name in boxed]
    box += [f"        {line}" for src, dst, line in lines if src in boxed and dst in boxed]
    box.append("    }")
    for name, label in states:  # the box where its first state would be declared
        if name not in boxed:
            out.append(f'    state "{mermaid_escape(label)}" as {name}')
        elif name == first_boxed:
            out += box
    out += [f"    {line}" for src, dst, line in lines if not (src in boxed and dst in boxed)]
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
    rows.append(f'<tr><td align="left"><font color="{BOX_COLOR}"><b>box</b> (pale blue)</font>: '
                f"{esc(CORDON_BOX)}, the states of a cycle; while fsm-cleaner's cordon is on the node, its "
                "journal names one of them</td></tr>")
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
        seen: dict[str, int] = {}
        for label in labels.split(" | "):
            trigger = label.split(" ", 1)[0]
            t = TRIGGERS[trigger]
            n = seen[trigger] = seen.get(trigger, 0) + 1  # two rows, one trigger, one pair of states
            key = f"{src}.{trigger}.{dst}" + (f".{n}" if n > 1 else "")
            g.add_edge(src, dst, key=key, id=key, label=label, color=t.color, fontcolor=t.color,
                       style=t.style, penwidth=t.penwidth, weight=t.weight)
    _arrange(g)
    return g


def _arrange(g: Any) -> None:
    """Box the may_hold_cordon states. Lay the rest out for reading: the states run down the page in machine
    order, each one that leads to the next on a straight spine (the last, where branches meet, is left free
    to sit under them), and the final state beside BESIDE_FINAL, near the states that stop from outside."""
    names = machine.STATE_NAMES
    if BESIDE_FINAL not in names:
        raise ValueError(f"diagrams.BESIDE_FINAL is {BESIDE_FINAL!r}, not a state of fsm_cleaner/machine.py")
    finals = [n for n in names if not g.out_edges(n)]
    for src, dst in zip(names, names[1:], strict=False):
        if dst not in finals and g.has_edge(src, dst):
            g.get_node(src).attr["group"] = "spine"
    for e in g.edges():
        if e[1] in finals:
            e.attr["constraint"] = "false"  # the final state's place is set below, not by the edges into it
    g.add_subgraph([BESIDE_FINAL, *finals], name="beside_final", rank="same")
    if boxed := list(_cordon_states()):
        g.add_subgraph(boxed, name="cluster_" + CORDON_BOX_ID, id=CORDON_BOX_ID, label=CORDON_BOX,
                       labeljust="r", labelloc="t", fontsize="12", fontcolor=BOX_COLOR, color=BOX_COLOR,
                       fillcolor=BOX_FILL, style="rounded,filled", penwidth="1.5",
                       margin="16")  # room for the stop and fail edges that curve round the states


def svg(g: Any) -> bytes:
    out = g.draw(format="svg", prog="dot").decode()
    out = re.sub(r"<!-- Generated by graphviz version .*?-->\n", "", out, count=1, flags=re.S)
    return out.encode()


def png(g: Any) -> bytes:
    return g.draw(format="png", prog="dot", args=f"-Gdpi={PNG_DPI}")


# --- files ---------------------------------------------------------------------------------------------
def render_all(out_dir: str | Path) -> list[Path]:
    """Write the SVG, PNG, Mermaid and RUNBOOK.md into out_dir; return their paths."""
    _check_complete()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    g = agraph()
    text = mermaid()
    m, _ = _graph_machine("mermaid")
    book = runbook.render(machine.STATES, edges(m), m.initial, {n: t.meaning for n, t in TRIGGERS.items()},
                          text, SVG, PNG)
    contents = {SVG: svg(g), PNG: png(g), MMD: text.encode(), RUNBOOK: book.encode()}
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
