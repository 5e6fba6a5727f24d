"""metrics.yaml / pings.yaml -> plain definitions (JSON-able dicts), parsed by glean_parser.

glean_parser's own errors are long (the YAML node, then the schema's documentation of it);
``DefinitionError`` keeps the file, the node and the one-line reason.
"""

from __future__ import annotations

import contextlib
import re
import textwrap
import warnings
from pathlib import Path

from ..naming import (APP_ID_RE, DOC_TYPE_RE, DOC_TYPE_RULE, TABLE_RE, column_name, dataset_name, is_column_name,
                      is_reserved_ping, table_name)
from ..table_schema import METRIC_TYPES

APP_ID_RULE = "must be 1-100 chars of [A-Za-z0-9._-], starting with a letter or digit"
RESERVED_PING_RULE = ("the name of the table that holds every ping's events (events_stream): no ping of that "
                      "name is loaded; rename the ping")

# glean_parser metric type -> the key it has under "metrics" in a ping (table_schema.METRIC_TYPES).
WIRE_TYPE = {name: name for name in METRIC_TYPES}
WIRE_TYPE["denominator"] = "counter"  # an external denominator is sent as a counter

# Fields of a metric definition the dictionary shows and stores (the rest of glean_parser's
# serialisation is code-generation detail).
METRIC_FIELDS = ("type", "description", "lifetime", "send_in_pings", "labels", "extra_keys", "expires",
                 "data_reviews", "bugs", "notification_emails", "data_sensitivity", "unit", "time_unit",
                 "memory_unit", "range_min", "range_max", "bucket_count", "histogram_type", "disabled",
                 "version", "dual_labels", "denominator_metric", "numerators", "structure")
PING_FIELDS = ("description", "include_client_id", "send_if_empty", "reasons", "bugs", "data_reviews",
               "notification_emails", "include_info_sections", "enabled", "metadata")


METRICS_SCHEMA_PREFIX = "moz://mozilla.org/schemas/glean/metrics/"

# How deep a metrics.yaml or pings.yaml may nest its mappings and lists. glean_parser's checks and
# PyYAML's composer recurse once per level (or more): a file nested some hundreds deep ended
# `apps add` with a RecursionError's traceback. Glean's own files nest 6 deep at most
# (category, metric, extra_keys, key, its field, a list).
MAX_NESTING = 64
# How many nodes the aliases of a YAML file (``*name``, the copy of an ``&name`` node) may add to
# the nodes it writes. glean_parser checks (and reports) the definitions as aliases expand them, so
# ten lines of aliases, each listing the one before ten times (a "billion laughs"), kept `apps add`
# busy for ever, and 100,000 nodes of them gave a 5.8 MB error message. A ``<<: *defaults`` merge
# in each metric of a large file adds some thousands.
MAX_ALIAS_NODES = 100_000
# The longest line a problem of a definitions file is said in: glean_parser's messages quote the
# value they are about, whatever its size.
MAX_MESSAGE_CHARS = 500


class DefinitionError(ValueError):
    """metrics.yaml / pings.yaml that glean_parser refuses; str() is the compact list."""

    def __init__(self, messages: list[str]):
        self.messages = messages
        super().__init__("\n".join(messages))


def compact_error(message: str) -> str:
    """One glean_parser error as "file: category.metric: reason", without the schema documentation."""
    text = str(message).split("Documentation for this node:")[0]
    head, _, rest = text.partition("\n")
    body = textwrap.dedent(rest).strip()
    node, reason = [], []
    fenced = False
    for line in body.splitlines():
        if line.strip() == "```":
            fenced = not fenced
        elif fenced:
            if line.rstrip().endswith(":"):  # a key whose value is the next, deeper lines
                node.append(line.strip()[:-1])
        elif line.strip():
            reason.append(line.strip())
    where = ".".join(node)
    reason_text = " ".join(" ".join(reason).split())
    return ": ".join(x for x in (head.rstrip(":"), where, reason_text) if x)


def _shortened(message: str) -> str:
    """``message`` cut to MAX_MESSAGE_CHARS, saying how much was left out."""
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return f"{message[:MAX_MESSAGE_CHARS]}... ({len(message) - MAX_MESSAGE_CHARS} more characters)"


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "name"):  # enums
        return value.name
    return str(value)


def _labels(serialized: dict):
    labels = serialized.get("labels")
    if isinstance(labels, (list, set, tuple)):
        return sorted(labels)
    return labels


def parse(app_id: str, metrics_files: list[Path], pings_files: list[Path]) -> dict:
    """Parse the files; returns {"app_id", "dataset", "metrics": [...], "pings": [...]}."""
    with warnings.catch_warnings(), _jsonschema_untouched():
        warnings.simplefilter("ignore", DeprecationWarning)  # glean_parser's use of deprecated jsonschema APIs
        return _parse(app_id, metrics_files, pings_files)


@contextlib.contextmanager
def _jsonschema_untouched():
    """glean_parser replaces the ``required`` check of jsonschema's validator classes, for the
    whole process, to word its messages its own way. The submit edge's error messages come from
    those classes too (validation.py), so what glean_parser changes is put back afterwards."""
    import jsonschema

    classes = [getattr(jsonschema, name) for name in ("Draft3Validator", "Draft4Validator", "Draft6Validator",
                                                       "Draft7Validator", "Draft201909Validator",
                                                       "Draft202012Validator") if hasattr(jsonschema, name)]
    saved = [(cls, dict(cls.VALIDATORS)) for cls in classes]
    try:
        yield
    finally:
        for cls, checks in saved:
            cls.VALIDATORS.clear()
            cls.VALIDATORS.update(checks)


def _not_definitions(files: list[Path]) -> list[str]:
    """Files glean_parser gets wrong: with no `$schema` line it raises "Invalid schema key None",
    naming no file, and a top level that is not a mapping it skips as if it defined nothing (and
    `apps add` would then replace the app's definitions with nothing)."""
    from glean_parser import parser, util

    messages = []
    for path in files:
        try:
            content = util.load_yaml_or_json(path)
        except Exception:  # not YAML/JSON: glean_parser reports it, with the line
            continue
        if content is None or content == {}:  # empty: glean_parser reports or allows it
            continue
        if not isinstance(content, dict):
            messages.append(f"{path}: the top level is a {type(content).__name__}, not a mapping: "
                            "not a metrics.yaml or pings.yaml")
        elif not isinstance(content.get("$schema"), str):
            messages.append(f"{path}: no `$schema` line: a metrics.yaml starts with `$schema: {parser.METRICS_ID}`, "
                            f"a pings.yaml with `$schema: {parser.PINGS_ID}`")
    return messages


def _safe_loader():
    """libyaml's safe loader where PyYAML has it, as glean_parser's own, else PyYAML's pure-Python one
    (half a second a MiB: 35 s for a metrics.yaml of 64 MiB)."""
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _too_big(files: list[Path]) -> list[str]:
    """Files nested deeper than MAX_NESTING, or whose aliases expand to more than MAX_ALIAS_NODES
    nodes, said before glean_parser reads them (see both). Read as YAML events, which takes no
    recursion and does not expand an alias; a file that is not YAML is left to glean_parser."""
    import yaml

    messages = []
    for path in files:
        if path.suffix == ".json":  # glean_parser reads it as JSON: nesting only (JSON has no aliases)
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            depth = deepest = 0
            for char in re.sub(r'"(?:[^"\\]|\\.)*"', "", text):
                if char in "[{":
                    depth += 1
                    deepest = max(deepest, depth)
                elif char in "]}":
                    depth -= 1
            if deepest > MAX_NESTING:
                messages.append(f"{path}: nests {deepest} deep, over the {MAX_NESTING} levels a definitions file "
                                "may have (MAX_NESTING)")
            continue
        if path.suffix not in (".yml", ".yaml", ".yamlx"):  # glean_parser says it takes no other
            continue
        for loader in (_safe_loader(), yaml.SafeLoader):
            try:
                said = _yaml_too_big(path, loader)
            except (yaml.YAMLError, OSError, UnicodeDecodeError):  # glean_parser reports it, with the line
                continue  # (libyaml's own nesting limit is said so before its events come: PyYAML's next)
            if said:
                messages.append(said)
            break
    return messages


def _yaml_too_big(path: Path, loader) -> str | None:
    """_too_big of one YAML file, read with ``loader``: what is wrong, or None."""
    import yaml

    sizes: dict[str, int] = {}  # anchor -> the nodes its node holds, itself included
    open_nodes: list[list] = []  # [anchor, nodes so far] of each collection being read
    written = expanded = 0
    with path.open("rb") as stream:
        for event in yaml.parse(stream, Loader=loader):
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                written += 1
                open_nodes.append([event.anchor, 1])
                if len(open_nodes) > MAX_NESTING:
                    return (f"{path}:{event.start_mark.line + 1}: nests deeper than the {MAX_NESTING} levels a "
                            "definitions file may have (MAX_NESTING)")
                continue
            if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                anchor, size = open_nodes.pop()
            elif isinstance(event, yaml.ScalarEvent):
                written += 1
                anchor, size = event.anchor, 1
            elif isinstance(event, yaml.AliasEvent):
                anchor, size = None, sizes.get(event.anchor, 1)
            else:
                continue
            if anchor is not None:
                sizes[anchor] = size
            if open_nodes:
                open_nodes[-1][1] += size
            else:
                expanded += size
            if sum(n for _, n in open_nodes) + expanded - written > MAX_ALIAS_NODES:
                return (f"{path}:{event.start_mark.line + 1}: its aliases (*name) make it more than "
                        f"{MAX_ALIAS_NODES} nodes larger than it is written (MAX_ALIAS_NODES): write the "
                        "definitions out, or use fewer aliases")
    return None


def _redefined(files: list[Path]) -> list[str]:
    """A category, or a metric of a category, written twice in one metrics.yaml. YAML keeps the
    last of two equal keys, and glean_parser's parse does too: the first definition (or the first
    category's metrics) was dropped without a word. glean_parser's lint calls both an error
    (REDEFINED_CATEGORY, REDEFINED_METRIC); across two files its parse refuses them itself
    ("Duplicate metric name ..."), as it does a ping written twice in a pings.yaml. Said in the
    words of that refusal, with the lines of both."""
    import yaml

    messages = []
    for path in files:
        if path.suffix not in (".yml", ".yaml", ".yamlx"):  # a .json file: glean_parser reads it as JSON
            continue
        try:
            root = yaml.compose(path.read_text(encoding="utf-8"), Loader=_safe_loader())
        except (yaml.YAMLError, OSError, UnicodeDecodeError):  # glean_parser reports it, with the line
            continue
        if not isinstance(root, yaml.MappingNode):
            continue
        schema = [v.value for k, v in root.value if isinstance(k, yaml.ScalarNode) and k.value == "$schema"
                  and isinstance(v, yaml.ScalarNode)]
        metrics_file = bool(schema) and schema[-1].startswith(METRICS_SCHEMA_PREFIX)
        # a field written twice in a metric or a ping (`type: counter`, later `type: quantity`): YAML kept
        # the last one and nothing said so. Both kinds of file; glean_parser says a ping written twice itself
        for item_path, item in _items(root, 2 if metrics_file else 1):
            for trail, node in _mappings(item, item_path):
                for key, line, first in _repeated_keys(node):
                    messages.append(f"{path}:{line}: Duplicate key '{key}' in {trail} already defined at line "
                                    f"{first}: YAML keeps only the last")
        if not metrics_file:
            continue
        for category, line, first in _repeated_keys(root):
            messages.append(f"{path}:{line}: Duplicate category '{category}' already defined at line {first}: "
                            "YAML keeps only this one, without the metrics of the first; write each category once")
        for key, value in root.value:
            if isinstance(key, yaml.ScalarNode) and not key.value.startswith("$"):
                for name, line, first in _repeated_keys(value):
                    messages.append(f"{path}:{line}: Duplicate metric name '{key.value}.{name}' already defined "
                                    f"at line {first}: YAML keeps only the last definition")
    return messages


def _items(root, depth: int):
    """(dotted name, node) of each definition in a file's tree: a metric (``category.name``,
    ``depth`` 2) or a ping (``depth`` 1); keys starting with ``$`` are not definitions."""
    import yaml

    level = [("", root)]
    for _ in range(depth):
        level = [(f"{name}.{key.value}" if name else key.value, value) for name, node in level
                 if isinstance(node, yaml.MappingNode) for key, value in node.value
                 if isinstance(key, yaml.ScalarNode) and not key.value.startswith("$")]
    return level


def _mappings(node, trail: str):
    """(dotted path, node) of ``node`` and of every mapping inside it (MAX_NESTING bounds the depth)."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        yield trail, node
        for key, value in node.value:
            yield from _mappings(value, f"{trail}.{key.value}" if isinstance(key, yaml.ScalarNode) else trail)
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            yield from _mappings(value, f"{trail}[{i}]")


def _repeated_keys(node) -> list[tuple[str, int, int]]:
    """(key, its line, the line of its first occurrence) for each key written again in the mapping
    ``node``; keys a merge (``<<: *defaults``) brings in are meant to be overridden, and not counted."""
    import yaml

    if not isinstance(node, yaml.MappingNode):
        return []
    first: dict[str, int] = {}
    repeated = []
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue
        line = key.start_mark.line + 1
        if key.value in first:
            repeated.append((key.value, line, first[key.value]))
        else:
            first[key.value] = line
    return repeated


def _parse(app_id: str, metrics_files: list[Path], pings_files: list[Path]) -> dict:
    from glean_parser import parser

    if not APP_ID_RE.fullmatch(app_id):
        raise DefinitionError([f"app id {app_id!r}: {APP_ID_RULE}"])
    files = [Path(p) for p in [*metrics_files, *pings_files]]
    unreadable = [f"{p}: no such file" if not p.exists() else f"{p}: not a regular file" for p in files
                  if not p.is_file()]  # /dev/null, a FIFO: there, but no definitions file
    if unreadable:
        raise DefinitionError(unreadable)
    if not files:
        raise DefinitionError(["give at least one --metrics or --pings file"])
    unusable = _too_big(files) or _not_definitions(files)
    if unusable:
        raise DefinitionError(unusable)
    result = parser.parse_objects(files)
    try:
        errors = [compact_error(e) for e in result]
    except Exception as exc:  # glean_parser raises on some unreadable input instead of yielding
        raise DefinitionError([f"{type(exc).__name__}: {exc}"]) from None
    errors = _redefined(files) + errors
    if errors:
        raise DefinitionError([_shortened(message) for message in errors])
    metrics, pings, reserved = [], [], []
    for category, objects in result.value.items():
        if category == "tags":
            continue
        for name, obj in objects.items():
            serialized = obj.serialize()
            if category == "pings" and is_reserved_ping(name):
                # glean_parser allows `events-stream`, whose table is the events table: storing it failed
                # on DuckDB's "Binder Error: Referenced column event_index not found"
                where = (getattr(obj, "defined_in", None) or {}).get("filepath", "pings")
                reserved.append(f"{where}: {name}: {RESERVED_PING_RULE}")
                continue
            if category == "pings":
                ping = {"name": name, "table": table_name(name, "1")}
                ping.update({k: _jsonable(serialized.get(k)) for k in PING_FIELDS})
                ping["reasons"] = ping["reasons"] or {}
                pings.append(ping)
                continue
            metric = {"id": obj.identifier(), "category": obj.category, "name": name}
            metric.update({k: _jsonable(serialized.get(k)) for k in METRIC_FIELDS if k in serialized})
            metric["labels"] = _labels(serialized)
            metric["wire_type"] = WIRE_TYPE.get(metric["type"])  # None for events
            metric["column"] = column_name(metric["id"])
            metrics.append(metric)
    if reserved:
        raise DefinitionError(reserved)
    metrics.sort(key=lambda m: m["id"])
    pings.sort(key=lambda p: p["name"])
    return {"app_id": app_id, "dataset": dataset_name(app_id), "metrics": metrics, "pings": pings}


def _list_of(*kinds):
    return lambda value: isinstance(value, list) and all(isinstance(v, kinds) for v in value)


def _dict_of(*kinds):
    return lambda value: isinstance(value, dict) and all(isinstance(v, kinds) for v in value.values())


def _is(*kinds):
    return lambda value: isinstance(value, kinds) and not (bool not in kinds and isinstance(value, bool))


# The fields of a definition the dictionary's pages show, and what glean_parser gives for each (each
# may be left out, or null): check_parsed refuses others, which made every page of the app a 500.
SHOWN_FIELDS = {
    "metrics": {"category": _is(str), "name": _is(str), "description": _is(str), "lifetime": _is(str),
                "expires": _is(str, int), "labels": _list_of(str), "extra_keys": _dict_of(dict, str),
                "bugs": _list_of(str, int), "data_reviews": _list_of(str, int),
                "notification_emails": _list_of(str), "data_sensitivity": _list_of(str), "unit": _is(str),
                "time_unit": _is(str), "memory_unit": _is(str)},
    "pings": {"description": _is(str), "reasons": _dict_of(str), "bugs": _list_of(str, int),
              "data_reviews": _list_of(str, int), "notification_emails": _list_of(str),
              "include_client_id": _is(bool), "send_if_empty": _is(bool)},
}


def check_parsed(app) -> None:
    """DefinitionError unless ``app`` has the shape ``parse`` gives, in what storing it reads
    (``catalog.store_app``, ``columns_to_create``): serve's /apps/add takes it from a client, and
    a field missing or of another kind is that request's fault, said as such (not a KeyError)."""
    if not isinstance(app, dict):
        raise DefinitionError([f"the app's definitions are a {type(app).__name__}, not an object"])
    problems = []
    app_id = app.get("app_id")
    if not isinstance(app_id, str) or not APP_ID_RE.fullmatch(app_id):
        problems.append(f"app_id {app_id!r}: {APP_ID_RULE}")
    elif app.get("dataset") != dataset_name(app_id):
        problems.append(f"dataset {app.get('dataset')!r}: the dataset of app id {app_id} is {dataset_name(app_id)}")
    for key, fields in (("metrics", {"id": str, "type": str, "column": str, "wire_type": (str, type(None)),
                                     "send_in_pings": (list, type(None))}),
                        ("pings", {"name": str, "table": str})):
        items = app.get(key)
        if not isinstance(items, list):
            problems.append(f"{key}: a list is needed, not {type(items).__name__}")
            continue
        seen: dict[str, int] = {}  # metric id, or ping table -> the index of the first that has it
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                problems.append(f"{key}[{i}]: an object is needed, not {type(item).__name__}")
                continue
            wrong = [name for name, kind in fields.items() if not isinstance(item.get(name), kind)]
            shown = [name for name, fits in SHOWN_FIELDS[key].items() if item.get(name) is not None
                     and not fits(item[name])]
            if wrong:
                problems.append(f"{key}[{i}]: {', '.join(wrong)} missing or of another type")
            elif shown:  # stored, every page of the app was a 500 (a description that is a list, say)
                problems.append(f"{key}[{i}]: {', '.join(shown)} not as glean_parser gives "
                                f"{'it' if len(shown) == 1 else 'them'}")
            elif key == "metrics" and not is_column_name(item["column"]):
                problems.append(f"metrics[{i}]: column {item['column']!r} cannot be a column name")
            # .get: wire_type and send_in_pings may be left out, as null (a KeyError was a 500)
            elif key == "metrics" and item.get("wire_type") is not None and item["wire_type"] not in METRIC_TYPES:
                problems.append(f"metrics[{i}]: wire_type {item['wire_type']!r} is no metric type")
            elif key == "metrics" and not all(isinstance(p, str) for p in item.get("send_in_pings") or ()):
                problems.append(f"metrics[{i}]: send_in_pings holds something other than ping names")
            elif key == "pings" and not TABLE_RE.fullmatch(item["table"]):
                problems.append(f"pings[{i}]: table {item['table']!r} is not a table name (<ping>_v<version>)")
            elif key == "pings" and (named := _ping_name_problems(i, item["name"], item["table"])):
                problems += named  # the name a ping is sent under (the submit edge's rule), and its table
            else:  # stored twice, the second replaced the first without a word (glean_parser refuses both)
                problems += _defined_twice(key, i, item, items, seen)
    if problems:
        raise DefinitionError(problems)


def _ping_name_problems(i: int, name: str, table: str) -> list[str]:
    """What is wrong with ping ``name`` stored with ``table`` (check_parsed). Before, /apps/add took
    any name: one no ping can be sent under was listed as a defined ping that never gets data, and a
    table not the name's left the definition unseen (the table's own ping took its place)."""
    if not DOC_TYPE_RE.fullmatch(name):
        shown = f"{name[:40]!r}{'...' if len(name) > 40 else ''}"  # a name of any length: not all of it
        return [f"pings[{i}]: name {shown} is not a ping name: it {DOC_TYPE_RULE}"]
    if is_reserved_ping(name):
        return [f"pings[{i}]: name {name!r} is {RESERVED_PING_RULE}"]
    if table != table_name(name, "1"):
        return [f"pings[{i}]: table {table!r} is not the table of ping {name!r}, {table_name(name, '1')}"]
    return []


def _defined_twice(key: str, i: int, item: dict, items: list, seen: dict[str, int]) -> list[str]:
    """``metrics[i]`` with the id of one before it, or ``pings[i]`` with the name or the table of
    one before it (check_parsed): one definition per metric and per ping table."""
    mark = item["id"] if key == "metrics" else item["table"]
    first = seen.setdefault(mark, i)
    if first == i:
        return []
    if key == "metrics":
        return [f"metrics[{i}]: metric {mark!r} is defined twice (metrics[{first}] and metrics[{i}])"]
    other = items[first]["name"]
    if other == item["name"]:
        return [f"pings[{i}]: ping {other!r} is defined twice (pings[{first}] and pings[{i}])"]
    return [f"pings[{i}]: ping {item['name']!r} has the table of ping {other!r} (pings[{first}]), {mark}: "
            "one definition per table"]


def shared_columns(app: dict) -> list[str]:
    """Metrics of one type whose ids differ only by '.' and '_' (``a.b_c``, ``a_b.c``): one column
    ``metrics.<type>.a_b_c`` holds both, and its values cannot be told apart."""
    by_column: dict[tuple[str, str], list[str]] = {}
    for metric in app["metrics"]:
        if metric.get("wire_type"):
            by_column.setdefault((metric["wire_type"], metric["column"]), []).append(metric["id"])
    return [f"{' and '.join(ids)} share the column metrics.{wire}.{column}: their values cannot be told apart "
            "(in one ping, the second goes to additional_properties); rename one"
            for (wire, column), ids in sorted(by_column.items()) if len(ids) > 1]


def columns_to_create(app: dict) -> dict[str, dict[str, set[str]]]:
    """Table -> metric type -> columns that the definitions say will arrive there."""
    out: dict[str, dict[str, set[str]]] = {}
    for ping in app["pings"]:
        out.setdefault(ping["table"], {})
    for metric in app["metrics"]:
        wire = metric.get("wire_type")
        if not wire:
            continue
        for ping in metric.get("send_in_pings") or []:
            if ping == "all-pings" or not DOC_TYPE_RE.fullmatch(ping):
                continue
            out.setdefault(table_name(ping, "1"), {}).setdefault(wire, set()).add(metric["column"])
    return out
