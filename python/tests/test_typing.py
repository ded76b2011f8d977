"""The stubs cover what the compiled module exports."""

import ast
import pathlib

import cfg_guidance
from cfg_guidance import _native


def test_stubs_name_every_export():
    stub = pathlib.Path(cfg_guidance.__file__).with_name("_native.pyi")
    assert stub.exists(), "the .pyi stubs are installed with the package"
    tree = ast.parse(stub.read_text())
    stubbed = {n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    exported = {n for n in dir(_native) if not n.startswith("_")}
    assert exported <= stubbed, exported - stubbed
    assert (pathlib.Path(cfg_guidance.__file__).with_name("py.typed")).exists()
