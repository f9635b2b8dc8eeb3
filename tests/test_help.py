"""--help as a person reads it at 80 columns, and one spelling per idea across the commands."""

from __future__ import annotations

import json
import os
import re
import shlex

import pytest
import typer.core
import typer.main

from tests.conftest import REPO, assert_one_line_error, run_cli, run_process
from toolkit.cli import app
from toolkit.formats import FORMATS, PRECISIONS
from toolkit.recipes import RECIPES
from toolkit.runners import RUNTIMES

Option = typer.core.TyperOption  # typer carries its own copy of click
COMMANDS = ["data", "train", "export", "verify", "compare", "bench", "predict", "web"]
# options whose absence means "do not": nothing is written, nothing overridden; they have no default to show
NOTHING_UNLESS_GIVEN = {"json_path", "markdown", "plot", "tolerance", "shape", "help"}


def command(name: str) -> typer.core.TyperCommand:
    return typer.main.get_command(app).commands[name]


def help_at_80(python, *args: str) -> str:
    done = run_process(python, "-m", "toolkit", *args, "--help", env={**os.environ, "COLUMNS": "80"})
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def helps(python) -> dict[str, str]:
    return {name: help_at_80(python, *([name] if name else [])) for name in ["", *COMMANDS]}


def test_help_fits_80_columns_and_cuts_no_option_name(helps):
    for name, text in helps.items():
        assert all(len(line) <= 80 for line in text.splitlines()), name
        assert "…" not in text, name
        if name:
            for param in command(name).params:
                shown = param.opts + param.secondary_opts if isinstance(param, Option) else [param.metavar]
                for opt in shown:
                    assert re.search(rf"(^|[ ,/]){re.escape(opt)}([ ,]|$)", text, re.M), (name, opt)


def test_placeholders_name_the_value_and_defaults_show(helps):
    for name in COMMANDS:
        text = helps[name]
        assert not re.search(r"<(list|bool|str|int|float|path)", text, re.I), (name, text)
        ctx = typer.core._click.Context(command(name), info_name=name)
        for param in command(name).params:
            names, help_text = param.get_help_record(ctx) or ("", "")
            if isinstance(param, Option) and not param.is_flag:
                assert re.search(r" [A-Z][A-Z.=_]*$", names), (name, names)  # --batch-sizes SIZES
            if isinstance(param, Option) and param.name not in NOTHING_UNLESS_GIVEN:
                assert "[default: " in help_text or "default: " in help_text, (name, names, help_text)


def test_the_extras_a_command_needs_are_in_its_help(helps):
    for name in ("train", "export"):
        assert "pip install 'toolkit[train]'" in helps[name]
        entry = re.search(rf"^  {name} (.*?)(?=^  \w|\Z)", helps[""], re.M | re.S).group(1)  # its wrapped lines
        assert "[needs toolkit[train]" in " ".join(entry.split()), entry
    for name in ("verify", "bench", "predict", "web", "data", "compare"):
        assert "toolkit[" not in helps[name]


def test_one_spelling_per_idea_across_commands():
    for name in COMMANDS:
        for param in command(name).params:
            if "--json" in param.opts:  # a path everywhere, - for stdout
                assert isinstance(param, Option) and not param.is_flag and param.metavar == "PATH", name
            if "--provider" in param.opts or "--device" in param.opts:  # the one name, the other an alias
                assert param.opts[:2] == ["--device", "--provider"], (name, param.opts)


def test_provider_stays_an_alias_of_device(exported, mnist_dir, tmp_path):
    for spelling in ("--device", "--provider"):
        result = run_cli("verify", "--artifacts", exported, "--data-dir", mnist_dir, "--format", "onnx",
                         "--precision", "fp32", "--batch1-images", "10", spelling, "cpu",
                         "--json", tmp_path / "v.json")
        assert result.exit_code == 0, result.stderr
        assert json.loads((tmp_path / "v.json").read_text())["provider"] == "cpu"


def test_predict_json_takes_a_path_and_never_overwrites_an_image(exported, tmp_path, mnist_dir):
    from PIL import Image

    from toolkit.data import load_split

    pixels, labels = load_split(mnist_dir, "test")
    image = tmp_path / "digit.png"
    Image.fromarray(pixels[0]).save(image)
    before = image.read_bytes()
    model = exported / "model.app.onnx"
    result = run_cli("predict", "--model", model, "--json", tmp_path / "p.json", image)
    assert result.exit_code == 0, result.stderr
    assert [p["digit"] for p in json.loads((tmp_path / "p.json").read_text())] == [int(labels[0])]
    assert "predictions by" in result.stdout  # a file asked for: the table still prints
    # the old flag spelling: the image is not taken for the output, nor an option for a file name
    assert "not the image" in assert_one_line_error(run_cli("predict", "--model", model, "--json", image, image), 2)
    assert image.read_bytes() == before
    line = assert_one_line_error(run_cli("predict", "--json", "--model", model, image), 2)
    assert "--model looks like an option" in line and not (tmp_path / "--model").exists()


def test_no_arguments_prints_the_help_as_help_does(python):
    bare = run_process(python, "-m", "toolkit", env={**os.environ, "COLUMNS": "80"})
    assert bare.returncode == 2 and "error" not in bare.stderr, bare.stderr
    assert bare.stdout == help_at_80(python)


COMMANDS_DOC = REPO / "docs" / "commands.md"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# the names an option's comma list may hold, where a wrong one in an example would only fail when run
VOCABULARY = {"--format": {*FORMATS, "all", "triton", "pytorch"}, "--precision": {*PRECISIONS, "all"},
              "--runtime": {*RUNTIMES, "all"}, "--recipe": set(RECIPES)}


def test_every_option_is_in_the_commands_doc():
    """Each option --help lists is in docs/commands.md: in its command's section, or among the options the
    commands share (the text before the first section)."""
    text = COMMANDS_DOC.read_text()
    shared = text.split("\n## ", 1)[0]
    missing = []
    for name in COMMANDS:
        section = re.search(rf"^## `toolkit {name}`\n(.*?)(?=^## |\Z)", text, re.M | re.S).group(1)
        for param in command(name).params:
            if isinstance(param, Option) and param.name != "help":
                spellings = param.opts + param.secondary_opts  # a flag counts as --x or --no-x
                if not any(re.search(rf"{re.escape(s)}(?![\w-])", shared + section) for s in spellings):
                    missing.append(f"{name} {spellings[0]}")
    assert not missing, f"docs/commands.md does not mention {', '.join(missing)}"


def doc_commands() -> list[tuple[str, str, list[str]]]:
    """(doc, command, its arguments) for every `toolkit COMMAND ...` in the docs' bash blocks."""
    found = []
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                lexer = shlex.shlex(line, posix=True, punctuation_chars=True)  # && | ; ( ) apart, # a comment
                lexer.whitespace_split = True
                words = list(lexer)
                for i in (i for i, word in enumerate(words) if word == "toolkit"):
                    rest = words[i + 1:]
                    while rest and rest[0] in ("-q", "--quiet", "--debug"):
                        rest = rest[1:]
                    end = next((j for j, w in enumerate(rest) if w in ("&&", "||", "|", ";", "(", ")")), len(rest))
                    found.append((doc.name, rest[0] if rest else "", rest[1:end]))
    return found


def test_the_docs_examples_parse_as_their_command_does():
    """Every example names a command, options it has, values of the right type and known names in its lists."""
    examples = doc_commands()
    assert len(examples) > 40, "the docs lost their examples"
    for doc, name, args in examples:
        assert name in COMMANDS, (doc, name, args)
        command(name).make_context(name, list(args))  # an unknown option or a bad value raises a usage error
        for option, value in zip(args, args[1:]):
            if option in VOCABULARY:
                unknown = set(value.split(",")) - VOCABULARY[option]
                assert not unknown, f"{doc}: toolkit {name} {option} {value}: {unknown} is no such name"


def test_an_export_example_of_a_named_checkpoint_writes_a_folder_of_its_own():
    """A folder never mixes two checkpoints' files: an example that exports a --checkpoint into the default
    exported/, where the examples before it export the newest run, would be refused as shown."""
    for doc, name, args in doc_commands():
        if name == "export" and "--checkpoint" in args:
            out = args[args.index("--out") + 1] if "--out" in args else "exported"
            assert os.path.normpath(out) != "exported", (doc, args)


def test_a_default_said_to_be_the_recipes_is_set_by_every_recipe(helps):
    """`[default: (the recipe's)]` only where each recipe has a value of its own for that option."""
    for param in command("train").params:
        if param.show_default == "the recipe's":
            assert all(param.name in recipe for recipe in RECIPES.values()), param.name
    holdout = " ".join(re.search(r"^  --holdout N(.*?)(?=^  -)", helps["train"], re.M | re.S).group(1).split())
    assert holdout.endswith("[default: (0: none)]"), holdout


def test_the_file_arguments_name_every_kind_of_file_they_open(helps):
    """compare's A and bench's FILE list each format's file (a .app.onnx is an .onnx; TorchScript has no one
    suffix of its own outside an export)."""
    for name, argument in (("compare", "A"), ("bench", "FILE")):
        text = " ".join(re.search(rf"^  {argument} (.*?)(?=^\S|^  [A-Z] )", helps[name], re.M | re.S).group(1).split())
        for fmt in FORMATS.values():
            shown = "TorchScript" if fmt.name == "torchscript" else ".onnx" if fmt.suffix.endswith(".onnx") \
                else fmt.suffix
            assert re.search(rf"{re.escape(shown)}\b", text), (name, fmt.name, text)


def test_the_file_arguments_say_which_kinds_must_be_toolkit_made(helps):
    """An .onnx, TorchScript, .pt2 or .aoti.pt2 file opens whoever made it; a .pte, .tflite or IR .xml only with the
    toolkit's metadata inside (runners.foreign.open_file): the help lists those after the word toolkit."""
    for name, argument in (("compare", "A"), ("bench", "FILE")):
        text = " ".join(re.search(rf"^  {argument} (.*?)(?=^\S|^  [A-Z] )", helps[name], re.M | re.S).group(1).split())
        anyone, _, toolkit_made = text.partition("toolkit")
        assert all(s in anyone for s in (".onnx", "TorchScript", ".pt2", ".aoti.pt2")), (name, text)
        assert all(s not in anyone and s in toolkit_made for s in (".pte", ".tflite", ".xml")), (name, text)


def test_predict_help_names_every_kind_of_file_it_runs(helps):
    model = " ".join(re.search(r"^  --model PATH(.*?)(?=^  -)", helps["predict"], re.M | re.S).group(1).split())
    assert all(s in model for s in (".onnx", ".xml", ".tflite")), model
    summary = " ".join(helps["predict"].split("Options:")[0].split())
    assert all(s in summary for s in ("ONNX Runtime", "OpenVINO", "LiteRT")), summary
