"""The model listing's failure reasons for a client key (full_reasons False): the cause code and its fixed wording,
never a path or a file's text; an engine candidate that could not be opened keeps no error; admin keys get all."""

from __future__ import annotations

from app.registry import Slot, Table
from tests.support.services import service_on

SECRET_PATH = "/srv/secret-place/m/1/model.onnx"


class _Model:
    """Stands for a loaded version: only what the listing reads."""

    def describe(self):
        return {"engine": {"candidates": [
            {"provider": "cpu", "artifact": "model.onnx", "passed": True, "why": None, "chosen": True},
            {"provider": "cpu", "artifact": "int8.onnx", "passed": False, "why": f"{SECRET_PATH}: cannot load it"},
            {"provider": "openvino", "artifact": "model.onnx", "passed": False, "agreement": 0.5,
             "why": "agreement 0.5 < 0.99"},
        ], "rule": "fastest"}}


def listing(full_reasons: bool, tmp_path) -> list[dict]:
    service = service_on(tmp_path)
    registry = service.registry
    registry.slots["m"] = {
        1: Slot("m", 1, tmp_path, state="ready", model=_Model()),  # type: ignore[arg-type]
        2: Slot("m", 2, tmp_path, state="failed", reason=f"{SECRET_PATH}: missing", cause="missing_files"),
    }
    registry.tables["m"] = Table(refused=("table_refused", f"version 2 failed: {SECRET_PATH}: missing"))
    registry.tables["q"] = Table(refused=("bad_serving_json", "serving.json: traffic.zqx-quoted: not an integer"))
    return service.list_models(full_reasons)


def test_a_client_gets_causes_and_fixed_reasons(tmp_path):
    listed = listing(False, tmp_path)
    assert SECRET_PATH not in str(listed) and "zqx-quoted" not in str(listed) and str(tmp_path) not in str(listed)
    ready, failed, quoted = listed
    assert failed["cause"] == "missing_files" and failed["reason"].startswith("a file the version needs is missing")
    assert ready["routing"]["refused"]["cause"] == "table_refused"
    assert quoted["cause"] == "bad_serving_json" and quoted["reason"].startswith("the model's serving.json")
    whys = [t["why"] for t in ready["engine"]["candidates"]]
    assert whys == [None, "could not be opened (details in the server log)", "agreement 0.5 < 0.99"]


def test_an_admin_gets_the_full_reasons(tmp_path):
    listed = listing(True, tmp_path)
    assert SECRET_PATH in str(listed) and "zqx-quoted" in str(listed)
