"""Install DuckDB's spatial extension from the duckdb-extension-spatial wheel (bqemulator needs it
and would otherwise try to download it). Run with the emulator venv's python; idempotent."""

import glob
import os

import duckdb
import duckdb_extension_spatial

pattern = os.path.join(os.path.dirname(duckdb_extension_spatial.__file__), "extensions", "*", "spatial.duckdb_extension")
[path] = glob.glob(pattern)
con = duckdb.connect()
con.execute(f"INSTALL '{path}'")
con.execute("LOAD spatial")
print(f"spatial extension installed from {path}")
