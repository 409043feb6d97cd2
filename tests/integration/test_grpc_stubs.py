"""The committed gRPC stubs are what `make grpc-stubs` makes from the committed .proto (with the grpcio-tools of the
dev extra), and they import with the pinned protobuf and grpcio (in a subprocess: their `inference` package cannot
share a process with tritonclient.grpc's)."""

from __future__ import annotations

import shutil
import subprocess
import sys

from tests.support.paths import ROOT

PACKAGE = "app/api/grpc"
GENERATED = ["grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2.pyi", "grpc_predict_v2_pb2_grpc.py"]


def test_committed_stubs_are_regenerated_identically(tmp_path):
    (tmp_path / PACKAGE).mkdir(parents=True)
    shutil.copy(ROOT / PACKAGE / "grpc_predict_v2.proto", tmp_path / PACKAGE)
    make = (ROOT / "Makefile").read_text().split("\ngrpc-stubs:", 1)[1].split("\n\n", 1)[0]
    args = make.split("grpc_tools.protoc", 1)[1].replace("\\\n", " ").split()  # the Makefile's own command
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", *args], cwd=tmp_path, check=True, timeout=60)
    for name in GENERATED:
        assert (tmp_path / PACKAGE / name).read_text() == (ROOT / PACKAGE / name).read_text(), name


def test_stubs_import_with_the_installed_runtimes():
    code = ("import warnings; warnings.simplefilter('error'); "
            "from app.api.grpc import grpc_predict_v2_pb2 as pb, grpc_predict_v2_pb2_grpc as stubs; "
            "assert pb.DESCRIPTOR.package == 'inference'; "
            "print(sorted(m.name for m in pb.DESCRIPTOR.services_by_name['GRPCInferenceService'].methods))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("[", 1)[1].startswith("'ModelInfer', 'ModelMetadata', 'ModelReady', 'ServerLive'")
