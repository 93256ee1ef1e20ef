"""The committed protobuf code is exactly what scripts/gen_protos.py makes from protos/."""


from scripts.gen_protos import ROOT, generate, generated_files


def test_regenerating_changes_nothing(tmp_path):
    fresh = generate(tmp_path)
    assert fresh, "protoc generated nothing"
    for path in fresh:
        committed = ROOT / path.relative_to(tmp_path)
        assert committed.exists(), f"{committed} is generated but not committed"
        assert committed.read_text() == path.read_text(), (
            f"{committed} is stale: run `python scripts/gen_protos.py` and commit the result"
        )
    committed = {p.relative_to(ROOT) for p in generated_files(ROOT / "distautograd")}
    assert committed == {p.relative_to(tmp_path) for p in fresh}
