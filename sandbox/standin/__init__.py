"""Stand-in for databend-meta, databend-metactl and databend-query, built on pysyncobj (raft).

Runs inside lab hosts with Debian's /usr/bin/python3 (stdlib + pysyncobj copied beside it), so every module
here uses only the standard library, pysyncobj and relative imports. See sandbox/standin/README.md.
"""
