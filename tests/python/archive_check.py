"""Reads Tollgate's Parquet archive with pyarrow and DuckDB, independently of Tollgate,
and prints what each reader found as one JSON object.

Usage: archive_check.py ARCHIVE_DIR
"""

import json
import os
import sys

import duckdb
import pyarrow.dataset as ds

TABLES = ["priced_interactions", "policy_violations", "quota_decisions", "governance_changes"]


def with_pyarrow(root):
    found = {}
    for table in TABLES:
        path = os.path.join(root, table)
        if not os.path.isdir(path):
            continue
        data = ds.dataset(path, format="parquet", partitioning="hive").to_table()
        summary = {
            "rows": data.num_rows,
            "distinct_ids": len(set(data.column("id").to_pylist())),
            "dates": sorted(set(str(date) for date in data.column("date").to_pylist())),
        }
        if table == "priced_interactions":
            summary["cost_total_nanos"] = sum(data.column("cost_total_nanos").to_pylist())
            summary["org_ids"] = sorted(set(data.column("org_id").to_pylist()))
        found[table] = summary
    return found


def with_duckdb(root):
    found = {}
    connection = duckdb.connect()
    for table in TABLES:
        path = os.path.join(root, table)
        if not os.path.isdir(path):
            continue
        source = f"read_parquet('{path}/**/*.parquet', hive_partitioning = true)"
        rows, distinct_ids = connection.execute(f"SELECT count(*), count(DISTINCT id) FROM {source}").fetchone()
        dates = [str(row[0]) for row in connection.execute(f"SELECT DISTINCT date FROM {source} ORDER BY 1").fetchall()]
        summary = {"rows": rows, "distinct_ids": distinct_ids, "dates": dates}
        if table == "priced_interactions":
            (total,) = connection.execute(f"SELECT sum(cost_total_nanos)::HUGEINT FROM {source}").fetchone()
            summary["cost_total_nanos"] = int(total)
            orgs = connection.execute(f"SELECT DISTINCT org_id FROM {source} ORDER BY 1").fetchall()
            summary["org_ids"] = [row[0] for row in orgs]
        found[table] = summary
    return found


if __name__ == "__main__":
    root = sys.argv[1]
    print(json.dumps({"pyarrow": with_pyarrow(root), "duckdb": with_duckdb(root)}))
