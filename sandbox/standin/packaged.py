"""The packaged configuration files and systemd units, as the official databend packages ship them."""
from __future__ import annotations

# scripts/distribution/configs/databend-meta.toml (the packaged file, comments kept).
PACKAGED_META_TOML = '''# Usage:
# databend-meta -c databend-meta.toml

admin_api_address       = "0.0.0.0:28002"
grpc_api_address        = "0.0.0.0:9191"
# databend-query fetch this address to update its databend-meta endpoints list,
# in case databend-meta cluster changes.
grpc_api_advertise_host = "localhost"

[log]

[log.file]
level = "WARN"
format = "text"
dir = "/var/log/databend"

[raft_config]
id            = 0
raft_dir      = "/var/lib/databend/raft"
raft_api_port = 28004

# Assign raft_{listen|advertise}_host in test config.
# This allows you to catch a bug in unit tests when something goes wrong in raft meta nodes communication.
raft_listen_host = "0.0.0.0"
raft_advertise_host = "localhost"

# Start up mode: single node cluster
single        = true

# Start up mode: join a cluster
# NOTE: `single` and `join` are mutually exclusive: set exactly one of them.
# NOTE: for the first run of the first node of a cluster, keep `single = true`.
#       After the cluster is formed, comment out `single` and list all meta nodes'
#       raft addresses (raft_advertise_host:raft_api_port) in `join` on every node.
# NOTE: `join` is ignored if this node is already a member of a cluster.
# join = ["127.0.0.1:28004"]
'''

# scripts/distribution/configs/databend-query.toml (shortened to the sections the stand-in reads; comments kept).
PACKAGED_QUERY_TOML = '''# Usage:
# databend-query -c databend-query.toml

[query]
max_active_sessions = 256
shutdown_wait_timeout_ms = 5000

# Internal flight rpc for cluster communication.
flight_api_address = "0.0.0.0:9091"

# Admin REST API.
admin_api_address = "0.0.0.0:8080"

# Metrics REST API.
metric_api_address = "0.0.0.0:7070"

# Query Handler: MySQL
mysql_handler_host = "0.0.0.0"
mysql_handler_port = 3307

# Query Handler: HTTP API
http_handler_host = "0.0.0.0"
http_handler_port = 8000

tenant_id = "default"
cluster_id = "default"

[log]

[log.file]
level = "WARN"
format = "text"
dir = "/var/log/databend"

[meta]
# It is a list of `grpc_api_advertise_host:<grpc-api-port>` of databend-meta config
endpoints = ["0.0.0.0:9191"]
username = "root"
password = "root"
client_timeout_in_second = 10
auto_sync_interval = 60

# Storage config.
[storage]
# fs | s3 | azblob | gcs | oss | cos
type = "fs"

[storage.fs]
data_path = "/var/lib/databend/data"
'''

META_UNIT = '''[Unit]
Description=Databend Meta
Documentation=https://docs.databend.com
After=network-online.target
Requires=network-online.target

[Service]
User=databend
Group=databend
ExecStart=/usr/bin/databend-meta --config-file /etc/databend/databend-meta.toml
ExecReload=/bin/kill -HUP $MAINPID
Restart=no
AmbientCapabilities=CAP_NET_BIND_SERVICE
EnvironmentFile=-/etc/default/databend-meta

[Install]
WantedBy=multi-user.target
'''

QUERY_UNIT = '''[Unit]
Description=Databend Query
Documentation=https://docs.databend.com
After=network-online.target
Requires=network-online.target

[Service]
User=databend
Group=databend
ExecStart=/usr/bin/databend-query --config-file /etc/databend/databend-query.toml
ExecReload=/bin/kill -HUP $MAINPID
Restart=no
AmbientCapabilities=CAP_NET_BIND_SERVICE
EnvironmentFile=-/etc/default/databend-query

[Install]
WantedBy=multi-user.target
'''

META_DEFAULT = '''# Environment for databend-meta.service, e.g.:
# RUST_BACKTRACE=1
# SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
'''

QUERY_DEFAULT = '''# Environment for databend-query.service, e.g.:
# RUST_BACKTRACE=1
'''

LAUNCHER = '''#!/usr/bin/python3
"""{program}: databend stand-in launcher (sandbox/standin)."""
import sys
sys.path.insert(0, "/usr/lib/databend-standin")
from standin.{module} import main
sys.exit(main())
'''
