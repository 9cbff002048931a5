"""Generate the Python code of the Samenloop wire format from its .proto files.

Runs protoc (from grpcio-tools) with the protobuf, gRPC and mypy-protobuf
plugins over every ``proto/samenloop/v1/*.proto`` and writes ``*_pb2.py``,
``*_pb2_grpc.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.pyi`` beside them, so that
they import as ``samenloop.v1``. The tool versions are pinned in
pyproject.toml, so the output is byte-identical wherever it is regenerated.

    python proto/generate.py            # regenerate in place (make proto)
    python proto/generate.py --check    # exit 1 if the committed files are stale
    python proto/generate.py --out DIR  # write under DIR instead of proto/

This is a script, not a module of the package: ``proto/`` is deliberately not
importable (the proto-plus library owns that name).
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.resources
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
PACKAGE_DIR = Path("samenloop") / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi", "_pb2_grpc.pyi")


def proto_files(root: Path = PROTO_ROOT) -> list[Path]:
    """The .proto files of the package, relative to ``root``, in a fixed order."""
    return sorted(p.relative_to(root) for p in (root / PACKAGE_DIR).glob("*.proto"))


def generated_files(out: Path) -> list[Path]:
    """The generated files present under ``out``, relative to it, sorted."""
    directory = out / PACKAGE_DIR
    if not directory.is_dir():
        return []
    return sorted(
        p.relative_to(out)
        for p in directory.iterdir()
        if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)
    )


def _plugin(name: str) -> Path:
    """Find a protoc plugin script installed beside the running interpreter."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file():
        return candidate
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"generate.py: {name} not found; install the dev extra (mypy-protobuf)")
    return Path(found)


def protoc_args(out: Path, root: Path = PROTO_ROOT) -> list[str]:
    """The protoc command line that generates all code into ``out``."""
    include = importlib.resources.files("grpc_tools") / "_proto"
    return [
        "grpc_tools.protoc",
        f"--proto_path={root}",
        f"--proto_path={include}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out=quiet:{out}",
        f"--mypy_grpc_out=quiet:{out}",
        *(str(p) for p in proto_files(root)),
    ]


def generate(out: Path, root: Path = PROTO_ROOT) -> list[Path]:
    """Generate into ``out`` (files land in ``out/samenloop/v1``); return them.

    Generated files under ``out`` that no .proto file produces any more are
    removed, so a deleted .proto leaves nothing stale behind.
    """
    (out / PACKAGE_DIR).mkdir(parents=True, exist_ok=True)
    for stale in generated_files(out):
        (out / stale).unlink()
    status = protoc.main(protoc_args(out, root))
    if status != 0:
        raise SystemExit(f"generate.py: protoc failed with status {status}")
    return generated_files(out)


def describe(root: Path = PROTO_ROOT) -> bytes:
    """The serialized FileDescriptorSet of the package's .proto files, with
    source info (comments and their locations), for tests and tools that
    inspect the schema. Imported files (google/protobuf) are not included.
    """
    with tempfile.TemporaryDirectory(prefix="samenloop-proto-") as tmp:
        target = Path(tmp) / "descriptor_set.pb"
        include = importlib.resources.files("grpc_tools") / "_proto"
        status = protoc.main(
            [
                "grpc_tools.protoc",
                f"--proto_path={root}",
                f"--proto_path={include}",
                "--include_source_info",
                f"--descriptor_set_out={target}",
                *(str(p) for p in proto_files(root)),
            ]
        )
        if status != 0:
            raise SystemExit(f"generate.py: protoc failed with status {status}")
        return target.read_bytes()


def check(root: Path = PROTO_ROOT) -> list[str]:
    """Compare the committed generated files with fresh output.

    Returns one line per difference ("stale: ...", "missing: ...",
    "extra: ..."); an empty list means the committed files are up to date.
    """
    with tempfile.TemporaryDirectory(prefix="samenloop-proto-") as tmp:
        fresh_root = Path(tmp)
        fresh = set(generate(fresh_root, root))
        committed = set(generated_files(root))
        problems = [f"missing: {p}" for p in sorted(fresh - committed)]
        problems += [f"extra: {p}" for p in sorted(committed - fresh)]
        problems += [
            f"stale: {p}"
            for p in sorted(fresh & committed)
            if not filecmp.cmp(fresh_root / p, root / p, shallow=False)
        ]
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=PROTO_ROOT,
        help="directory to write samenloop/v1/... under (default: proto/)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="generate into a temporary directory and compare with the committed files",
    )
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            print("generated code is stale: run `make proto`", file=sys.stderr)
            return 1
        print("generated code is up to date")
        return 0
    written = generate(args.out.resolve())
    print(f"generated {len(written)} files in {args.out / PACKAGE_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
