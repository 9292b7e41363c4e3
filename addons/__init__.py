"""Chorus addons: the model plugin format, its loader and the bundled voices."""

from addons.export import NetworkExport, export_addon
from addons.frontend import TextError
from addons.loader import addon_dirs, find_addon, list_addons, load
from addons.manifest import AddonError, AddonManifest, read_manifest
from addons.onnxfile import share_cpu_arena
from addons.voice import AudioChunk, MelChunk, SynthesisOptions, ThreadsPlan, Voice, threads_plan

__all__ = [
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
    "share_cpu_arena",
    "threads_plan",
]
