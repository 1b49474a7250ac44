"""The run configuration: unknown keys, types, overrides, paths, and the shipped example configs."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from tunesmith.config import RunConfig, apply_overrides, load_config, parse_override
from tunesmith.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def minimal(**extra) -> dict:
    raw = {"data": {"train": "train.csv"}}
    raw.update(extra)
    return raw


def config_error(raw, overrides=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(raw, overrides)
    return str(info.value)


# ---------------------------------------------------------------- unknown keys

def test_unknown_top_level_key_suggests_the_close_one():
    msg = config_error(minimal(trian={"epochs": 1}))
    assert "unknown key 'trian'" in msg
    assert "did you mean 'train'?" in msg
    # the valid keys at that level are listed
    assert "Valid keys here: task, model, data, train, eval, output_dir" in msg


def test_unknown_nested_key_suggests_the_dotted_close_one():
    msg = config_error(minimal(train={"lrr": 1e-4}))
    assert "unknown key 'train.lrr'" in msg
    assert "did you mean 'train.lr'?" in msg
    assert "batch_size" in msg  # valid keys of the train section are listed


def test_unknown_key_in_data_section():
    msg = config_error({"data": {"train": "x.csv", "text_colum": "review"}})
    assert "unknown key 'data.text_colum'" in msg
    assert "did you mean 'data.text_column'?" in msg


def test_unknown_key_without_a_close_match_lists_valid_keys_only():
    msg = config_error(minimal(model={"zzzzzz": 1}))
    assert "unknown key 'model.zzzzzz'" in msg
    assert "did you mean" not in msg
    assert "max_length" in msg


def test_unknown_key_given_as_override_is_reported_the_same_way():
    msg = config_error(minimal(), ["train.lrr=3e-5"])
    assert "unknown key 'train.lrr'" in msg and "did you mean 'train.lr'?" in msg


def test_unknown_keys_in_a_yaml_file_name_the_file(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("data:\n  train: x.csv\ntrian:\n  epochs: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert str(cfg) in str(info.value)
    assert "did you mean 'train'?" in str(info.value)


# ---------------------------------------------------------------- Hugging Face names

GLOBAL_BATCH = "train.batch_size is the global batch; with N processes each gets batch_size/N"


def _lines(msg: str) -> list[str]:
    return msg.splitlines()[1:]


@pytest.mark.parametrize("where, key, value, answer", [
    ("train", "learning_rate", 3e-5, "tunesmith calls it train.lr"),
    ("train", "per_device_train_batch_size", 8, GLOBAL_BATCH),
    ("train", "per_device_eval_batch_size", 8,
     "tunesmith calls it eval.batch_size (per process: each process evaluates whole batches of that size)"),
    ("train", "bf16", True, "write train.precision: bf16 (fp32 for bf16: false; the default, auto, picks bf16 "
                            "where the hardware runs it natively)"),
    ("train", "fp16", True, "write train.precision: fp16 (fp32 for fp16: false; fp16 needs a CUDA GPU)"),
    ("model", "model_name_or_path", "bert-base-cased", "tunesmith calls it model.name"),
    ("train", "eval_steps", 500, "tunesmith calls it train.eval_every (an integer: every N optimizer steps; also "
                                 "epoch, or a fraction of an epoch)"),
    ("train", "num_train_epochs", 2, "tunesmith calls it train.epochs"),
    ("train", "weight_decay", 0.1, None),  # a tunesmith key already: no error
    (None, "weight_decay", 0.1, "it is train.weight_decay"),
    ("train", "warmup_ratio", 0.1, None),
    ("model", "warmup_ratio", 0.1, "it is train.warmup_ratio"),
    ("train", "warmup_steps", 100, "tunesmith has train.warmup_ratio only: the share of all optimizer steps "
                                   "(warmup_steps / total steps)"),
    ("train", "gradient_accumulation_steps", 4, "tunesmith calls it train.grad_accum"),
    (None, "max_grad_norm", 1.0, "it is train.max_grad_norm"),
    (None, "seed", 1, "it is train.seed"),
    ("train", "save_total_limit", 2, "tunesmith calls it train.keep_checkpoints (the best one is always kept too)"),
    ("train", "logging_steps", 10, "tunesmith calls it train.log_every"),
    ("train", "lr_scheduler_type", "cosine", "tunesmith calls it train.scheduler (linear, cosine or constant)"),
    ("train", "output_dir", "out", "it is output_dir, at the top level of the config"),
    ("model", "max_seq_length", 256, "tunesmith calls it model.max_length"),
    ("data", "max_seq_length", 256, "tunesmith calls it model.max_length"),
    (None, "learning_rate", 3e-5, "tunesmith calls it train.lr"),
    ("data", "model_name_or_path", "bert-base-cased", "tunesmith calls it model.name"),
    ("train", "optim", "adamw_torch", "no tunesmith key: tunesmith trains with AdamW (fused where the device has it)"),
    ("task", "learning_rate", 3e-5, "tunesmith calls it train.lr"),
])
def test_a_hugging_face_name_gets_the_exact_tunesmith_key(where: str | None, key: str, value: object,
                                                          answer: str | None) -> None:
    raw = minimal()
    (raw.setdefault(where, {}) if where else raw)[key] = value
    if answer is None:
        load_config(raw)
        return
    dotted = f"{where}.{key}" if where else key
    assert _lines(config_error(raw)) == [f"  - unknown key '{dotted}': {answer}"]


def test_hugging_face_names_in_one_config_each_get_their_line_and_an_override_says_so() -> None:
    raw = minimal(train={"learning_rate": 1e-4, "per_device_train_batch_size": 16, "bf16": True},
                  model={"model_name_or_path": "roberta-base"})
    assert _lines(config_error(raw, ["train.eval_steps=100"])) == [
        "  - unknown key 'model.model_name_or_path': tunesmith calls it model.name",
        "  - unknown key 'train.learning_rate': tunesmith calls it train.lr",
        f"  - unknown key 'train.per_device_train_batch_size': {GLOBAL_BATCH}",
        "  - unknown key 'train.bf16': write train.precision: bf16 (fp32 for bf16: false; the default, auto, picks "
        "bf16 where the hardware runs it natively)",
        "  - unknown key 'train.eval_steps': tunesmith calls it train.eval_every (an integer: every N optimizer "
        "steps; also epoch, or a fraction of an epoch) (given by override train.eval_steps=100)"]


def test_a_hugging_face_name_in_a_nested_section_and_among_task_options() -> None:
    assert _lines(config_error(minimal(model={"lora": {"lora_r": 4}}))) == [
        "  - unknown key 'model.lora.lora_r': tunesmith calls it model.lora.r"]
    assert _lines(config_error(minimal(task={"type": "token-classification", "label_all_tokens": True}))) == [
        "  - unknown key 'task.label_all_tokens': tunesmith calls it task.label_all_subtokens (token-classification)"]


def _is_schema_key(dotted: str) -> bool:
    """Whether a dotted key is one of the schema's: a RunConfig path, or task.X for a registered task's option."""
    from tunesmith import registry
    from tunesmith.config import _fields_at

    *path, key = dotted.split(".")
    if path == ["task"]:
        return key == "type" or any(key in registry.task_class(t).Options.model_fields for t in registry.task_names())
    return key in _fields_at(RunConfig, tuple(path))


def test_every_hugging_face_alias_names_a_real_schema_key_and_its_answer_names_it() -> None:
    from tunesmith.config import HF_NAMES

    assert _is_schema_key("train.lr") and _is_schema_key("model.lora.r") and _is_schema_key("task.doc_stride")
    assert not _is_schema_key("train.learning_rate") and not _is_schema_key("model.lora.lora_r")
    for name, (target, answer) in HF_NAMES.items():
        assert not _is_schema_key(f"train.{name}") or name in ("max_steps", "weight_decay", "warmup_ratio",
                                                                "max_grad_norm", "seed", "early_stopping_patience")
        if target is None:
            assert answer.startswith("no tunesmith key: "), name
        else:
            assert _is_schema_key(target), f"{name} -> {target}: no such key"
            assert target in answer, f"{name}: the answer does not name {target}"


# ---------------------------------------------------------------- types and values

@pytest.mark.parametrize("section,key,value", [
    ("train", "batch_size", "big"),
    ("train", "lr", "fast"),
    ("train", "epochs", -1),
    ("model", "max_length", 4),
    ("data", "on_missing", "skip"),
    ("data", "validation_ratio", 0.9),
    ("task", "problem_type", "ranking"),
    ("train", "precision", "fp8"),
])
def test_wrong_type_or_value_names_the_dotted_key(section, key, value):
    raw = minimal()
    raw.setdefault(section, {})[key] = value
    msg = config_error(raw)
    assert re.search(rf"^\s+- {section}\.{key}\b", msg, re.M), msg
    assert repr(value) in msg  # says what it got


def test_wrong_type_for_a_whole_section():
    msg = config_error(minimal(train=5))
    assert re.search(r"^\s+- train: ", msg, re.M), msg


def test_missing_train_data_is_an_error():
    msg = config_error({"task": "text-classification"})
    assert "data.train" in msg and "data.hub_dataset" in msg


def test_hub_dataset_alone_is_enough():
    assert load_config({"data": {"hub_dataset": "glue"}}).data.hub_dataset == "glue"


def test_task_string_shorthand():
    cfg = load_config(minimal(task="text-classification"))
    assert cfg.task.type == "text-classification"
    assert cfg.task.options["problem_type"] == "auto"


def test_defaults_and_yaml_round_trip():
    cfg = load_config(minimal())
    again = load_config(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg
    assert cfg.train.eval_every == "epoch" and cfg.data.on_missing == "drop"


def test_missing_config_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    notmap = tmp_path / "list.yaml"
    notmap.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(notmap)


# ---------------------------------------------------------------- --set overrides

def test_override_float_in_exponent_notation():
    keys, value = parse_override("train.lr=3e-5")
    assert keys == ["train", "lr"]
    assert isinstance(value, float) and value == 3e-05
    cfg = load_config(minimal(), ["train.lr=3e-5"])
    assert cfg.train.lr == 3e-05


def test_override_int_stays_int():
    cfg = load_config(minimal(), ["train.eval_every=5", "train.batch_size=8"])
    assert cfg.train.eval_every == 5 and isinstance(cfg.train.eval_every, int)
    assert cfg.train.batch_size == 8


def test_eval_every_as_a_fraction_of_an_epoch():
    cfg = load_config(minimal(), ["train.eval_every=0.25"])
    assert cfg.train.eval_every == 0.25 and isinstance(cfg.train.eval_every, float)
    for bad in ("1.5", "0", "-2", "0.0"):
        with pytest.raises(ConfigError, match="eval_every"):
            load_config(minimal(), [f"train.eval_every={bad}"])


def test_override_strings_null_and_bools():
    cfg = load_config(minimal(model={"name": "x"}), [
        "train.eval_every=epoch", "model.name=null", "model.trust_remote_code=true",
        "data.text_column=review", "output_dir=runs/exp-1e"])
    assert cfg.train.eval_every == "epoch"
    assert cfg.model.name is None
    assert cfg.model.trust_remote_code is True
    assert cfg.data.text_column == "review"
    assert cfg.output_dir == "runs/exp-1e"


def test_override_task_shorthand_and_into_string_task():
    cfg = load_config(minimal(task={"type": "x"}), ["task=text-classification"])
    assert cfg.task.type == "text-classification"
    # a dotted override into a task given as a string shorthand
    cfg = load_config(minimal(task="text-classification"), ["task.problem_type=regression"])
    assert cfg.task.type == "text-classification" and cfg.task.options["problem_type"] == "regression"


def test_override_creates_missing_sections_and_applies_in_order():
    raw = apply_overrides({}, ["data.train=a.csv", "train.epochs=2", "train.epochs=3"])
    assert raw == {"data": {"train": "a.csv"}, "train": {"epochs": 3}}


def test_override_without_equals_is_a_config_error():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(minimal(), ["train.lr"])


def test_override_through_a_non_section_is_an_error():
    with pytest.raises(ConfigError, match="override output_dir.x=1: 'output_dir' is not a section"):
        load_config(minimal(output_dir="runs/a"), ["output_dir.x=1"])
    # when the key is absent the section is created and validation names it
    with pytest.raises(ConfigError, match=r"- output_dir: "):
        load_config(minimal(), ["output_dir.x=1"])


def test_override_of_a_runconfig_object():
    cfg = load_config(minimal())
    again = load_config(cfg, ["train.epochs=1"])
    assert again.train.epochs == 1 and cfg.train.epochs == 3


def test_override_label_separator_pipe():
    cfg = load_config(minimal(), ["task.label_separator=|"])
    assert cfg.task.options["label_separator"] == "|"


def test_moved_keys_still_work_as_task_options():
    """model.truncation and data.label_separator, written before they became classification options."""
    cfg = load_config(minimal(model={"truncation": "head_tail"}, data={"train": "x.csv", "label_separator": "|"}))
    assert cfg.task.options["long_text"] == "head_tail" and cfg.task.options["label_separator"] == "|"
    assert "truncation" not in cfg.model_dump()["model"]


def test_override_value_with_yaml_indicator_is_taken_as_text():
    cfg = load_config(minimal(), ["data.text_column=@text"])
    assert cfg.data.text_column == "@text"


def test_overrides_do_not_modify_the_callers_dict():
    raw = minimal(train={"lr": 1e-4})
    before = copy.deepcopy(raw)
    load_config(raw, ["train.lr=3e-5", "model.dropout=0.2"])
    assert raw == before


# ---------------------------------------------------------------- paths

def test_relative_data_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    conf_dir = tmp_path / "project" / "configs"
    (conf_dir / "data").mkdir(parents=True)
    for name in ("train.csv", "dev.csv"):
        (conf_dir / "data" / name).write_text("text,label\na,b\n")
    (conf_dir / "cfg.yaml").write_text(
        "data:\n  train: data/train.csv\n  validation: data/dev.csv\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(conf_dir / "cfg.yaml")
    assert Path(cfg.data.train) == (conf_dir / "data" / "train.csv").resolve()
    assert Path(cfg.data.validation) == (conf_dir / "data" / "dev.csv").resolve()
    assert Path(cfg.data.train).is_absolute()
    # also when the config path itself is given relative to the working directory
    monkeypatch.chdir(tmp_path / "project")
    cfg = load_config(Path("configs/cfg.yaml"))
    assert Path(cfg.data.train) == (conf_dir / "data" / "train.csv").resolve()


def test_absolute_data_paths_are_kept(tmp_path):
    data = tmp_path / "t.csv"
    data.write_text("text,label\na,b\n")
    cfg_path = tmp_path / "sub" / "cfg.yaml"
    cfg_path.parent.mkdir()
    cfg_path.write_text(yaml.safe_dump({"data": {"train": str(data)}}))
    assert load_config(cfg_path).data.train == str(data)


# ---------------------------------------------------------------- shipped configs

def test_examples_demo_yaml_is_valid_and_its_data_exists():
    from tunesmith.data.prepare import load_splits
    from tunesmith.tasks.base import get_task

    cfg = load_config(REPO / "examples" / "demo.yaml")
    assert isinstance(cfg, RunConfig)
    train = Path(cfg.data.train)
    assert train.is_absolute() and train.is_file(), f"examples/demo.yaml points at a missing file: {train}"
    # its columns and labels are usable as configured
    task = get_task(cfg)
    data = load_splits(cfg.data, task.roles())
    assert len(data.splits["train"]) > 50
    assert not data.dropped
    task.fit(data.splits)
    assert len(task.labels) >= 2


def _readme_config(readme: Path = REPO / "README.md") -> str | None:
    if not readme.exists():
        return None
    for block in re.findall(r"^```ya?ml[^\n]*\n(.*?)^```", readme.read_text(encoding="utf-8"), re.M | re.S):
        if re.search(r"^task:", block, re.M):
            return block
    raise AssertionError("README.md has no ```yaml block with a `task:` key")


def test_readme_block_finder_picks_the_first_yaml_block_with_task(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n```yaml\nfoo: 1\n```\n\n```bash\ntask: no\n```\n\n"
                      "```yaml\ntask: text-classification\ndata:\n  train: a.csv\n```\n\n"
                      "```yaml\ntask: second\n```\n")
    block = _readme_config(readme)
    assert block == "task: text-classification\ndata:\n  train: a.csv\n"
    assert load_config(yaml.safe_load(block)).data.train == "a.csv"
    assert _readme_config(tmp_path / "missing.md") is None


def test_readme_example_config_is_valid():
    block = _readme_config()
    assert block is not None, "README.md is missing"
    raw = yaml.safe_load(block)
    assert isinstance(raw, dict)
    cfg = load_config(raw)
    assert isinstance(cfg, RunConfig)


def test_readme_config_reference_matches_the_schema() -> None:
    from tunesmith.config import config_reference

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- config-reference:start -->")[1].split("<!-- config-reference:end -->")[0]
    assert block.strip() == config_reference().strip(), \
        "README config reference is stale: regenerate it from tunesmith.config.config_reference()"


def test_every_config_field_has_a_description() -> None:
    """A field without a docstring gets an empty row in the README's reference (data.conll_tag_column had one)."""
    from tunesmith.config import config_reference

    empty = [line.split("|")[1].strip() for line in config_reference().splitlines()[2:]
             if not line.rstrip().rstrip("|").rsplit("|", 1)[-1].strip()]
    assert empty == []


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    command = next(line.strip() for line in readme.splitlines() if "pytest" in line and "pip install" in line)
    assert command in (REPO / ".ci" / "run").read_text(encoding="utf-8")


# ---------------------------------------------------------------- task options and roles

def test_unknown_task_option_gets_did_you_mean_among_the_tasks_options():
    msg = config_error(minimal(task={"type": "token-classification", "strid": 4}))
    assert "unknown key 'task.strid'. did you mean 'task.stride'?" in msg
    assert "Valid keys here: tag_scheme, label_all_subtokens, stride, seqeval_mode" in msg


def test_a_task_option_of_the_wrong_type_names_the_key():
    msg = config_error(minimal(task={"type": "question-answering", "doc_stride": "wide"}))
    assert re.search(r"^\s+- task\.doc_stride: .*'wide'", msg, re.M), msg


def test_unknown_task_type_gets_did_you_mean():
    msg = config_error(minimal(task="token-clasification"))
    assert "unknown task.type 'token-clasification'. Did you mean 'token-classification'?" in msg
    assert ("Known tasks: multiple-choice, question-answering, summarization, text-classification, text-generation, "
            "token-classification, translation") in msg


def test_task_options_round_trip_flat_in_yaml():
    cfg = load_config(minimal(task={"type": "token-classification", "stride": 8}))
    dumped = yaml.safe_load(cfg.to_yaml())["task"]
    assert dumped == {"type": "token-classification", "tag_scheme": "auto", "label_all_subtokens": False,
                      "stride": 8, "seqeval_mode": "default"}
    assert load_config(yaml.safe_load(cfg.to_yaml())).task.options == cfg.task.options


def test_data_columns_map_roles_and_unknown_roles_get_did_you_mean(tmp_path):
    from tunesmith.data.prepare import load_splits
    from tunesmith.errors import ConfigError
    from tunesmith.tasks.base import get_task

    f = tmp_path / "qa.jsonl"
    f.write_text(json.dumps({"q": "who?", "passage": "Ann did.", "answers": {"text": ["Ann"], "answer_start": [0]}})
                 + "\n")
    cfg = load_config({"task": "question-answering", "data": {"train": str(f),
                                                              "columns": {"question": "q", "context": "passage"}}})
    t = load_splits(cfg.data, get_task(cfg).roles()).splits["train"]
    assert t["question"] == ["who?"] and t["context"] == ["Ann did."] and t.column_of["question"] == "q"
    cfg = load_config({"task": "question-answering", "data": {"train": str(f), "columns": {"questoin": "q"}}})
    with pytest.raises(ConfigError) as err:
        load_splits(cfg.data, get_task(cfg).roles())
    assert "data.columns: unknown role 'questoin'. Did you mean 'question'?" in str(err.value)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "examples").glob("*.yaml")))
def test_every_example_config_is_valid(name: str) -> None:
    """Every shipped config validates against the schema (their data files may live elsewhere)."""
    raw = yaml.safe_load((REPO / "examples" / name).read_text(encoding="utf-8"))
    cfg = RunConfig.model_validate(raw)
    assert cfg.task.type == (raw["task"]["type"] if isinstance(raw["task"], dict) else raw["task"])


def _offline_command(text: str) -> list[str] | None:
    """The `tunesmith train ... --set k=v` command in an example's comments, as its --set values."""
    import shlex

    lines = [ln.lstrip("#").strip() for ln in text.splitlines() if ln.startswith("#")]
    start = next((i for i, ln in enumerate(lines) if ln.startswith("tunesmith train") and ln.endswith("\\")), None)
    if start is None:
        return None
    command = ""
    for ln in lines[start:]:
        command += " " + ln.removesuffix("\\")
        if not ln.endswith("\\"):
            break
    words = shlex.split(command)
    return [words[i + 1] for i, w in enumerate(words) if w == "--set"]


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "examples").glob("*.yaml")))
def test_every_example_names_its_data_and_its_offline_command_works(name: str) -> None:
    """An example reads a Hub dataset a user can download, or local files; the offline command in its comments
    points at the benchmark copy beside the repository, and (where that copy exists) its files are found."""
    path = REPO / "examples" / name
    text = path.read_text(encoding="utf-8")
    cfg = load_config(path) if "hub_dataset" in text or "../../shared" not in text else None
    sets = _offline_command(text)
    if cfg is not None and cfg.data.hub_dataset:
        assert sets is not None and "data.hub_dataset=null" in sets, "a Hub example shows its offline command"
    if sets is None or not (REPO.parent / "shared" / "data").is_dir():
        return
    offline = load_config(path, [s for s in sets if s.startswith("data.")])  # checks that every data file exists
    shared = (REPO.parent / "shared").resolve()  # CI's copy, or a link to it
    assert offline.data.hub_dataset is None and Path(offline.data.train).resolve().is_relative_to(shared)


@pytest.mark.parametrize("old, new, value", [("train.class_weights", "class_weights", "balanced"),
                                             ("train.loss", "loss", "focal"), ("train.sampler", "sampler", "balanced"),
                                             ("train.focal_gamma", "focal_gamma", 1.5),
                                             ("data.label_separator", "label_separator", "|"),
                                             ("model.truncation", "long_text", "head_tail")])
def test_a_moved_key_keeps_working_with_a_note_naming_its_new_place(old: str, new: str, value: object) -> None:
    import warnings

    from tunesmith import config

    section, key = old.split(".")
    config._NOTED.clear()
    raw = {"data": {"train": "x.csv"}}
    raw[section] = {**raw.get(section, {}), key: value}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = load_config(raw)
    assert cfg.task.options[new] == value
    assert [str(w.message) for w in caught] == [f"{old} is now task.{new}: the config works as it is; write "
                                                f"task.{new} to silence this note"]
    assert key not in cfg.model_dump()[section]
    with pytest.raises(ConfigError, match=f"{old} is the old place of task.{new}: set only task.{new}"):
        load_config({**raw, "task": {new: value}})


def test_train_help_lists_the_config_sections_from_the_schema() -> None:
    from typer.testing import CliRunner

    from tunesmith.cli import app
    from tunesmith.config import config_sections

    out = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "300", "NO_COLOR": "1"}).output
    assert "Config sections (every key: README's config reference):" in out
    sections = config_sections().splitlines()
    assert [line.split()[0] for line in sections] == list(RunConfig.model_fields)
    assert sections[0] == ("  task        What to learn: type (the task) and that task's options, written flat "
                           "beside it.")
    for line in sections:
        assert line.strip() in out
