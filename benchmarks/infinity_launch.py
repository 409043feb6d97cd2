"""Start Infinity's server (`infinity_emb v2 ...`) with its cross-encoder pointed at a local ONNX file.

Run with the Python of Infinity's own venv. infinity-emb 0.0.78 passes optimum the ONNX file's absolute path for a
local folder, which optimum 2.x refuses ("Could not find any ONNX files with target file name /…/x.onnx"); this
passes the bare file name, as optimum expects. Nothing else of Infinity changes.
"""

import sys
from pathlib import Path

import infinity_emb.transformer.crossencoder.optimum as crossencoder
from infinity_emb.cli import cli

_found = crossencoder.get_onnx_files
crossencoder.get_onnx_files = lambda **kwargs: Path(_found(**kwargs).name)

if __name__ == "__main__":
    sys.argv[0] = "infinity_emb"
    sys.exit(cli())
