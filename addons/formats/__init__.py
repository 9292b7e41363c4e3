"""The addon format: the manifest (``addon.json``) and the network files it names (``.pt2``
and ONNX, checked before anything runs), exporting networks as an addon and importing Piper voices."""

from addons.formats.export import NetworkExport, export_addon, export_network
from addons.formats.manifest import (
    SCHEMA_VERSION,
    AddonError,
    AddonManifest,
    DeploymentHints,
    StageDeployment,
    SynthesisDefaults,
    VoicePreset,
    check_manifest,
    read_manifest,
)
from addons.formats.netfile import (
    MAX_NETWORK_BYTES,
    NetworkFileError,
    check_expression,
    check_inside,
    check_signature,
    executable,
    load_program,
    max_length,
    runnable,
    traced,
)
from addons.formats.onnxfile import STANDARD_DOMAINS, OnnxModule, check_onnx, load_onnx, read_onnx, session
from addons.formats.piper import PiperImportError, import_piper
from addons.formats.runtimes import check_network, open_network

__all__ = [
    "MAX_NETWORK_BYTES",
    "SCHEMA_VERSION",
    "STANDARD_DOMAINS",
    "AddonError",
    "AddonManifest",
    "DeploymentHints",
    "NetworkExport",
    "NetworkFileError",
    "OnnxModule",
    "PiperImportError",
    "StageDeployment",
    "SynthesisDefaults",
    "VoicePreset",
    "check_expression",
    "check_inside",
    "check_manifest",
    "check_network",
    "check_onnx",
    "check_signature",
    "executable",
    "export_addon",
    "export_network",
    "import_piper",
    "load_onnx",
    "load_program",
    "max_length",
    "open_network",
    "read_manifest",
    "read_onnx",
    "runnable",
    "session",
    "traced",
]
