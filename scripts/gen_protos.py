"""Regenerates the committed protobuf and gRPC code in distautograd/protocol from protos/."""

import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"


def generate(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Writes the generated modules under out_dir and returns their paths."""
    from grpc_tools import protoc  # a dev dependency, not needed at run time

    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{pathlib.Path(protoc.__file__).parent / '_proto'}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *map(str, protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return generated_files(out_dir / "distautograd")


def generated_files(root: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in root.rglob("*_pb2*") if p.suffix in (".py", ".pyi") and "__pycache__" not in p.parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT, help="where the package tree is written")
    out = parser.parse_args().out
    for path in generate(out):
        print(path.relative_to(out))


if __name__ == "__main__":
    sys.exit(main())
