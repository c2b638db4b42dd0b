"""README.md and docs/*.md cite only what exists and say what the code does: design sections (docs/design.md,
shipped, every section cited), test ids, repository paths and file names, dotted ``baton_fast`` names, subcommand
flags, call keywords, relative links and anchors, the op table's signatures, the set-up commands (``.ci/run``) and
the static check's counts.  Text, imports and argument parsers only: no kernel runs or compiles."""
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def tracked_files():
    """Paths (relative, as git spells them) of the files git tracks that exist in the work tree."""
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return {name for name in names if (ROOT / name).is_file()}


def tracked_text_files():
    return [ROOT / name for name in sorted(tracked_files())
            if name.endswith((".py", ".md")) and ROOT / name != Path(__file__).resolve()]


def test_every_design_citation_resolves_to_docs_design_md():
    sections = {int(n) for n in re.findall(r"^## (\d+)\. ", (ROOT / "docs" / "design.md").read_text(), re.M)}
    assert sections == {1, 2, 3, 4, 5}
    cited = {}
    for path in tracked_text_files():
        text = path.read_text(errors="replace")
        assert "shared/DESIGN" not in text, f"{path.relative_to(ROOT)} cites a file the repository does not ship"
        for number in re.findall(r"(?:DESIGN(?:\.md)?|design\.md\)?) §(\d+)", text):
            cited.setdefault(int(number), path.relative_to(ROOT))
    assert cited and set(cited) <= sections, cited
    assert "docs/design.md" in (ROOT / "README.md").read_text()
    assert "docs/design.md §5" in (ROOT / "baton_fast" / "numerics.py").read_text()


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def without_fences(text):
    """Markdown ``text`` without its fenced code blocks."""
    return re.sub(r"```.*?```", "", text, flags=re.S)


def inline_spans(path):
    """The inline ``code`` spans of a doc (outside its fenced blocks)."""
    return re.findall(r"`([^`\n]+)`", without_fences(path.read_text()))


def cited_code(path):
    """The code a doc cites: its fenced blocks and its inline ``code`` spans."""
    return re.findall(r"```.*?```", path.read_text(), re.S) + inline_spans(path)


def expand_braces(path):
    """``tests/test_{a,b}.py`` -> ``tests/test_a.py``, ``tests/test_b.py`` (one brace group)."""
    match = re.fullmatch(r"(.*)\{([^}]*)\}(.*)", path)
    return [match[1] + part + match[3] for part in match[2].split(",")] if match else [path]


def test_every_cited_test_and_file_exists():
    """Test ids (``tests/x.py::test_y``, bare ``test_y``, ``test_y...`` for a prefix), repository paths and file
    names cited in README.md and docs/*.md exist in the tree; paths a cited command writes (``--out DIR``) are
    outputs, not checked; a bare file name may also be one of diffusers' transformers (``transformer_ltx2.py``)."""
    import diffusers

    tracked = tracked_files()
    names = {Path(name).name for name in tracked}
    names |= {p.name for p in (Path(diffusers.__file__).parent / "models" / "transformers").glob("*.py")}
    sources = {name: (ROOT / name).read_text() for name in tracked
               if name.startswith(("tests/", "bench/")) and name.endswith(".py")}
    defined = {fn for text in sources.values() for fn in re.findall(r"^\s*def (test_\w+)", text, re.M)}
    stale = []
    for doc in DOCS:
        outputs = re.findall(r"--(?:out|plots|json) ([\w./-]+)", doc.read_text())
        for code in cited_code(doc):
            for path, fn in re.findall(r"((?:tests|bench)/[\w/]+\.py)::(\w+)", code):
                if path not in sources or not re.search(rf"^\s*def {fn}\b", sources[path], re.M):
                    stale.append(f"{path}::{fn}")
            for fn, dots in re.findall(r"(?<![\w:/.])(test_\w+)(?![\w.(])(\.\.\.)?", code):
                if not (any(d.startswith(fn) for d in defined) if dots else fn in defined):
                    stale.append(fn)
            cited = re.findall(r"(?<![\w/.-])((?:baton_fast|kernels|bench|tests|docs|\.ci)/[\w./{},-]*)", code)
            for path in (expanded.rstrip("./") for path in cited for expanded in expand_braces(path)):
                known = path in tracked or any(name.startswith(path + "/") for name in tracked)
                if not known and not any(path == out.rstrip("/") or path.startswith(out.rstrip("/") + "/")
                                         for out in outputs):
                    stale.append(path)
            stale += [name for name in re.findall(r"(?<![\w/.-])([\w-]+\.py)\b", code) if name not in names]
        assert not stale, f"{doc.relative_to(ROOT)} cites what the tree lacks: {sorted(set(stale))}"


def test_every_cited_python_name_resolves():
    """Every dotted ``baton_fast.x.y`` / ``bf.x`` name and every ``python -m`` module in README.md and docs/*.md
    imports (a module) or is an attribute of what it names."""
    import importlib
    import importlib.util

    stale = []
    for doc in DOCS:
        for code in cited_code(doc):
            for name in re.findall(r"(?<![\w.])((?:baton_fast|bf)(?:\.\w+)+)", code):
                parts = ["baton_fast"] + name.split(".")[1:]
                obj = importlib.import_module("baton_fast")
                for i, part in enumerate(parts[1:], 2):
                    if hasattr(obj, part):
                        obj = getattr(obj, part)
                    elif importlib.util.find_spec(".".join(parts[:i - 1])).submodule_search_locations and \
                            importlib.util.find_spec(".".join(parts[:i])):
                        obj = importlib.import_module(".".join(parts[:i]))
                    else:
                        stale.append(name)
                        break
            stale += [m for m in re.findall(r"python3? -m (baton_fast[\w.]*)", code) if not importlib.util.find_spec(m)]
        assert not stale, f"{doc.relative_to(ROOT)} cites names the code lacks: {sorted(set(stale))}"


def test_every_cited_command_flag_exists():
    """Every ``--flag`` cited after ``baton-fast SUBCOMMAND`` (or ``-m baton_fast.cli SUBCOMMAND``, or ``SUBCOMMAND``
    at the start of a code span or line) in README.md and docs/*.md is one of that subcommand's flags."""
    import argparse
    import importlib

    from baton_fast.cli import SUBCOMMANDS

    flags = {}
    for name, (module, _) in SUBCOMMANDS.items():
        parser = argparse.ArgumentParser()
        importlib.import_module(module).add_arguments(parser)
        flags[name] = {option for action in parser._actions for option in action.option_strings}
    command_line = rf"(?:baton-fast\s+|-m baton_fast\.cli\s+|^)({'|'.join(flags)})(?![\w/.-])([^`\n]*)"
    stale, checked = [], 0
    for doc in DOCS:
        for code in cited_code(doc):
            code = re.sub(r"\\\n", " ", code)  # continued lines of one command
            for command, rest in re.findall(command_line, code, re.M):
                if not rest.startswith(":"):  # not an error message (``generate: error: ...``)
                    cited = re.findall(r"(?<![\w-])(--[a-z][\w-]*)", rest.split("|")[0].split("&&")[0])
                    checked += len(cited)
                    stale += [f"{command} {flag}" for flag in cited if flag not in flags[command]]
        assert not stale, f"{doc.relative_to(ROOT)} cites flags the commands lack: {sorted(set(stale))}"
    assert checked > 50, checked


def heading_anchors(path):
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped, spaces to hyphens."""
    text = without_fences(path.read_text())
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.*)$", text, re.M)}


def test_every_relative_link_and_anchor_resolves():
    """Every relative Markdown link in README.md and docs/*.md names an existing file, and its ``#anchor`` one of
    that file's headings."""
    broken, checked = [], 0
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            name, _, anchor = target.partition("#")
            path = (doc.parent / name).resolve() if name else doc
            checked += 1
            if not path.exists() or (anchor and path.suffix == ".md" and anchor not in heading_anchors(path)):
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not broken, broken
    assert checked > 30, checked


def test_readme_op_signatures_are_the_code_s():
    """The op table's ``name(arguments)`` rows in README.md spell each op's parameters and defaults as the code does."""
    import inspect

    import baton_fast

    def spelled(fn):
        parts, star = [], False
        for p in inspect.signature(fn).parameters.values():
            if p.kind is p.KEYWORD_ONLY and not star:
                parts.append("*")
                star = True
            default = "" if p.default is p.empty else f"={p.default!r}"
            parts.append(p.name + default.replace("1e-06", "1e-6"))
        return ", ".join(parts)

    rows = re.findall(r"^\| `(\w+)\(([^`]*)\)` \|", (ROOT / "README.md").read_text(), re.M)
    checked = [(name, args) for name, args in rows if args != "..."]
    assert len(checked) >= 4, rows
    for name, args in checked:
        assert args == spelled(getattr(baton_fast, name)), name


def test_readme_set_up_commands_are_what_ci_runs():
    """README.md's two set-up commands share one install line; the tests' command is the one ``.ci/run`` runs, and
    the main job's is a ``baton-fast`` subcommand with flags it has."""
    blocks = re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)
    main_job, tests = blocks[0].strip(), blocks[1].strip()
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line and not line.startswith(("#", "set ", "cd "))]
    assert ci == [tests], (ci, tests)
    install, run_tests = tests.split(" && ")
    assert run_tests == "python -m pytest -q tests" and main_job == f"{install} && baton-fast bench --quick"


def test_cited_calls_use_keywords_the_code_takes():
    """A call cited in README.md or docs/*.md (``rope_attention(..., block_mask=mask)``, ``RopeTable.ltx2(...)``,
    ``quant.quantize_v(...)``) of a public ``baton_fast`` / ``baton_fast.distributed`` / ``baton_fast.quant``
    name passes only keywords that callable has."""
    import inspect

    import baton_fast
    import baton_fast.distributed
    import baton_fast.quant

    callables = {}
    for module in (baton_fast.quant, baton_fast.distributed, baton_fast):  # the package's own names win
        for name in getattr(module, "__all__", dir(module)):
            obj = getattr(module, name, None)
            if callable(obj) and not name.startswith("_"):
                callables[name] = callables[f"{module.__name__.split('.')[-1]}.{name}"] = obj
                for attr, member in vars(obj).items() if inspect.isclass(obj) else ():
                    if not attr.startswith("_") and callable(getattr(obj, attr)):
                        callables[f"{name}.{attr}"] = getattr(obj, attr)
    wrong, checked = [], 0
    for doc in DOCS:
        for code in cited_code(doc):
            for name, args in re.findall(r"(?<![\w.])(?:bf\.|baton_fast\.)?(\w+(?:\.\w+)?)\(([^()`]*)\)", code):
                if name not in callables:
                    continue
                try:
                    params = inspect.signature(callables[name]).parameters
                except ValueError:  # a builtin without a signature
                    continue
                if any(p.kind is p.VAR_KEYWORD for p in params.values()):
                    continue
                for keyword in re.findall(r"(?:^|,)\s*(\w+)=", args):
                    checked += 1
                    if keyword not in params:
                        wrong.append(f"{doc.relative_to(ROOT)}: {name}(..., {keyword}=)")
    assert not wrong, wrong
    assert checked > 50, checked


def _static_counts():
    """Jobs of ``baton-fast selftest --static`` per kind: attention, RMSNorm + RoPE pre-pass, quantising pre-pass,
    backward and quantised attention (``static_check``'s job lists; nothing is compiled)."""
    from baton_fast import static_check

    jobs = static_check.shipped_jobs()
    counts = {kind: sum(job.kernel.startswith(kind) for job in jobs) for kind in ("rope_attention", "rmsnorm_rope",
                                                                                  "quantize", "attention_bwd")}
    return dict(counts, quant_attention=len(static_check.quant_jobs()))


def test_readme_compile_counts_are_the_static_check_s():
    """README.md's counts of the ahead-of-time compiles are the job lists of ``baton_fast.static_check``."""
    text = " ".join((ROOT / "README.md").read_text().split())
    stated = re.search(r"(\d+) compiles of the attention kernel .*?, (\d+) of the RMSNorm \+ RoPE pre-pass, (\d+) of "
                       r"the quantising pre-pass, and (\d+) of the two backward kernels.*?also compiles the (\d+) "
                       r"quantised-attention configurations", text)
    assert stated, "README.md: the static check's counts are no longer stated where this test reads them"
    counts = _static_counts()
    assert tuple(map(int, stated.groups())) == tuple(counts[kind] for kind in ("rope_attention", "rmsnorm_rope",
                                                                               "quantize", "attention_bwd",
                                                                               "quant_attention"))


def test_selftest_doc_static_counts_and_table_are_the_static_check_s():
    """docs/selftest.md's counts of the ``--static`` compiles are the job lists, and its measured table has one row
    per job, in the order ``selftest --static`` prints them, with the job's kernel, arch, config (where the job fixes
    it: the pre-passes' launchers pick theirs), dtype, head dim and flags: a table not regenerated after a config,
    variant or case changed fails."""
    from baton_fast import selftest, static_check

    text = (ROOT / "docs" / "selftest.md").read_text()
    prose = " ".join(text.split())
    counts = _static_counts()
    stated = re.search(r"— (\d+) compilations of the attention kernel .*?on both archs: (\d+) compilations\. .*?"
                       r"compiles (\d+) kernels\. .*?(\d+) compiles, all spill-free .*?no dot\), (\d+) compiles, and the "
                       r"(\d+) shipped configurations of the quantised attention", prose)
    assert stated, "docs/selftest.md: the static check's counts are no longer stated where this test reads them"
    jobs = static_check.shipped_jobs() + static_check.quant_jobs()
    assert tuple(map(int, stated.groups())) == (counts["rope_attention"], counts["rmsnorm_rope"], len(jobs),
                                                counts["attention_bwd"], counts["quantize"], counts["quant_attention"])
    table = text.split("Measured table (`baton-fast selftest --static`")[1].split("```")[1]
    kernels = {job.kernel for job in jobs}
    # kernel, arch, config, dtype, D, flags (pre-passes: several words), then the 8 measured columns
    rows = [(f[0], f[1], f[2], f[3], f[4], " ".join(f[5:-8])) for f in map(str.split, table.splitlines())
            if f and f[0] in kernels]
    expected = [(job.kernel, f"sm_{job.arch}", "x".join(map(str, job.config)) if job.config else None, job.dtype,
                 str(job.D), selftest._flag_summary(dict(kernel=job.kernel, flags=job.flag_dict, case=job.case,
                                                         heads=job.heads)))
                for job in jobs]
    assert len(rows) == len(expected), (len(rows), len(expected))
    wrong = [(row, want) for row, want in zip(rows, expected)
             if row[:2] + row[3:] != want[:2] + want[3:] or want[2] not in (None, row[2])]
    assert not wrong, wrong[:5]
    assert f"\n{len(jobs)}/{len(jobs)} passed\n" in table and f"arithmetic: {len(jobs)}/{len(jobs)} kernels" in table


# Cited names that are not this repository's: other projects' (diffusers, transformers, torch) and code that the
# docs cite as history (a reverted head-dim split, the per-layer gather the block mask replaced).
FOREIGN_NAMES = {"GenerationMixin", "_cp_plan", "set_default_attn_processor", "transformer_2", "_disable_dynamo",
                 "D_SPLIT", "attention_in_group_order"}


def test_every_cited_identifier_is_in_the_code():
    """Each snake_case or CamelCase name a code span of README.md or docs/*.md starts with (``name``,
    ``a.b.name(...)``, ``name=``) is a word of the repository's Python code, unless it is in FOREIGN_NAMES (test
    names and file names are checked above)."""
    code = " ".join((ROOT / name).read_text(errors="replace") for name in tracked_files() if name.endswith(".py"))
    words = set(re.findall(r"\w+", code))
    unknown = set()
    for doc in DOCS:
        for span in inline_spans(doc):
            head = re.match(r"[A-Za-z_][\w.]*(?=\(|$|=| )", span)
            for word in head[0].split(".") if head else ():
                snake = len(word) > 3 and "_" in word
                camel = len(word) > 4 and word[0].isupper() and any(c.islower() for c in word[1:])
                cited_test = word.startswith("test_")  # test_every_cited_test_and_file_exists checks those
                if (snake or camel) and not cited_test and word not in words | FOREIGN_NAMES:
                    unknown.add(f"{doc.relative_to(ROOT)}: {word}")
    assert not unknown, sorted(unknown)


def test_benchmarks_doc_names_every_bench_section():
    """docs/benchmarks.md's ``--sections`` option lists every section ``baton-fast bench`` has."""
    from baton_fast.bench.runner import SECTIONS

    options = " ".join((ROOT / "docs" / "benchmarks.md").read_text().split("## What is measured")[0].split())
    listed = re.search(r"`--sections` \(comma-separated subset of (.*?); default all\)", options)
    assert listed, "docs/benchmarks.md: the --sections option is no longer described where this test reads it"
    named = {name.strip() for span in re.findall(r"`([^`]*)`", listed[1]) for name in span.split(",")}
    assert named == set(SECTIONS), listed[1]
