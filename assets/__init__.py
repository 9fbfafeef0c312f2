"""Aha's data files (icons, pipeline files), installed as the package `aha_assets`: read them with
engine.assets.asset_path, never as a path beside the source tree (a wheel install has no source tree)."""
