"""Chorus addons: the model plugin format, its loader and the bundled voices."""

from addons.engine.catalog import DEFAULT_ADDON, addon_dirs, find_addon, list_addons
from addons.engine.loader import load, resolve_device
from addons.engine.options import SynthesisOptions
from addons.engine.voice import AudioChunk, MelChunk, ThreadsPlan, Voice, threads_plan
from addons.formats.export import NetworkExport, export_addon
from addons.formats.manifest import AddonError, AddonManifest, read_manifest
from addons.formats.onnxfile import share_cpu_arena
from addons.text.frontend import TextError

__all__ = [
    "DEFAULT_ADDON",
    "AddonError",
    "AddonManifest",
    "AudioChunk",
    "MelChunk",
    "NetworkExport",
    "SynthesisOptions",
    "TextError",
    "ThreadsPlan",
    "Voice",
    "addon_dirs",
    "export_addon",
    "find_addon",
    "list_addons",
    "load",
    "read_manifest",
    "resolve_device",
    "share_cpu_arena",
    "threads_plan",
]
