#!/usr/bin/env bash
# The runbook (Scale Meta Service Nodes) as a bare shell script: the baseline the flows are benchmarked against.
#
#   bench/runbook.sh SSH_CONFIG up   NEW_HOST NEW_ID "META_HOSTS" "QUERY_HOSTS"
#   bench/runbook.sh SSH_CONFIG down NODE_HOST NODE_ID "META_HOSTS" "QUERY_HOSTS"
#
# Hosts are aliases of SSH_CONFIG (e.g. the lab's `meta1`); META_HOSTS are the cluster's meta hosts before the change
# (for `down` it includes NODE_HOST). Every command is one plain `ssh -F SSH_CONFIG host '...'` (one handshake per
# command, as an operator's shell would do); verification polls `databend-metactl status` like metascale.waits
# (0.05 s doubling to 0.2 s, deadline VERIFY_DEADLINE_S, default 60). Ports are the packaged defaults; the nodes
# bind their own IP (so metactl is pointed at <ip>:9191 / <ip>:28002) and use a raft secret (so the leave reads the
# node's config, as the service's user).
# Exit 0 when the cluster ends in the expected state; 1 with a message otherwise. Optional: SSH_COUNT_FILE (one line
# per ssh call), BENCH_EVENTS (`noticed <what> <epoch>` when a poll succeeds).
set -euo pipefail

SSH_CONFIG=$1; ACTION=$2; NODE_HOST=$3; NODE_ID=$4; read -r -a METAS <<<"$5"; read -r -a QUERIES <<<"$6"
META_TOML=/etc/databend/databend-meta.toml
QUERY_TOML=/etc/databend/databend-query.toml
RAFT_PORT=28004; GRPC_PORT=9191; ADMIN_PORT=28002
DEADLINE_S=${VERIFY_DEADLINE_S:-60}

die() { echo "runbook.sh: $*" >&2; exit 1; }
[[ $NODE_ID =~ ^[0-9]+$ ]] || die "node id must be a number, got '$NODE_ID'"

r() {  # r HOST CMD...: run CMD (already quoted) on HOST
  local host=$1; shift
  if [[ -n ${SSH_COUNT_FILE:-} ]]; then echo "$host" >>"$SSH_COUNT_FILE"; fi
  ssh -F "$SSH_CONFIG" -o BatchMode=yes "$host" "$*"
}
ip_of() { ssh -F "$SSH_CONFIG" -G "$1" | awk '$1 == "hostname" {print $2}'; }

toml_list() {  # toml_list PORT HOST...: ["ip1:PORT", "ip2:PORT"]
  local port=$1 out="" h; shift
  for h in "$@"; do out+="${out:+, }\"$(ip_of "$h"):$port\""; done
  echo "[$out]"
}

# poll CHECK_FN: call it until it succeeds; 0.05 s doubling to 0.2 s between attempts; die after DEADLINE_S
poll() {
  local fn=$1 what=$2 delay=0.05 start=$SECONDS
  until "$fn"; do
    (( SECONDS - start >= DEADLINE_S )) && die "timed out after ${DEADLINE_S} s waiting for: $what"
    sleep "$delay"
    delay=$(awk -v d="$delay" 'BEGIN { d *= 2; if (d > 0.2) d = 0.2; print d }')
  done
  if [[ -n ${BENCH_EVENTS:-} ]]; then echo "noticed $what $(date +%s.%N)" >>"$BENCH_EVENTS"; fi
}

status_of() { r "$1" "cd /tmp && databend-metactl status --grpc-api-address $(ip_of "$1"):$GRPC_PORT"; }
voters_via() {  # voters_via HOST: the voter ids that HOST reports, space-separated, sorted
  status_of "$1" | awk '/^Voters:/ {v=1; next} /^[A-Za-z]/ {v=0} v && /id=/ {
    sub(/.*id=/, ""); sub(/ .*/, ""); print }' | sort -n | tr '\n' ' '
}
leader_via() { status_of "$1" | awk '/^Leader: id=/ {sub(/.*id=/, ""); sub(/ .*/, ""); print}'; }

set_join() {  # set_join HOST JOIN_LIST: rewrite [raft_config] join on HOST (without itself), comment out single
  local list
  list=$(sed -E "s/\"$(ip_of "$1"):$RAFT_PORT\"(, )?//; s/, \]/]/" <<<"$2")
  r "$1" "sudo sed -i -E -e 's/^(single *= *true)/# \\1/' -e '/^join *=/d' -e 's|^raft_advertise_host.*|&\\njoin = $list|' $META_TOML"
}
set_endpoints() {  # set_endpoints HOST LIST: rewrite [meta] endpoints on a query host
  r "$1" "sudo sed -i -E 's|^endpoints *=.*|endpoints = $2|' $QUERY_TOML"
}

scale_up() {
  local new_ip all_join endpoints existing_join source=${METAS[0]}
  new_ip=$(ip_of "$NODE_HOST")
  existing_join=$(toml_list $RAFT_PORT "${METAS[@]}")
  # 1. copy the configuration from an existing node; 2. set id, advertise host, single off, join
  r "$source" sudo cat $META_TOML \
    | sed -E -e "s/^id( *)= *[0-9]+/id\\1= $NODE_ID/" \
             -e "s/^(grpc_api_advertise_host|raft_advertise_host|raft_listen_host)( *)= *\"[^\"]*\"/\\1\\2= \"$new_ip\"/" \
             -e "s/^(grpc_api_address|admin_api_address)( *)= *\"[0-9.]*:/\\1\\2= \"$new_ip:/" \
             -e '/^single *=/d' -e '/^join *=/d' \
             -e "s|^raft_advertise_host.*|&\\njoin = $existing_join|" \
    | r "$NODE_HOST" "sudo tee $META_TOML >/dev/null"
  # 3. start the service
  r "$NODE_HOST" sudo systemctl enable --now databend-meta
  # 4. verify the new node is added
  joined() { [[ " $(voters_via "$NODE_HOST") " == *" $NODE_ID "* ]]; }
  poll joined "meta-$NODE_ID is a voter"
  # 5. update join on all meta nodes (new one included); 6. query nodes' endpoints
  all_join=$(toml_list $RAFT_PORT "${METAS[@]}" "$NODE_HOST")
  endpoints=$(toml_list $GRPC_PORT "${METAS[@]}" "$NODE_HOST")
  for h in "${METAS[@]}" "$NODE_HOST"; do set_join "$h" "$all_join"; done
  for h in "${QUERIES[@]}"; do set_endpoints "$h" "$endpoints"; done
}

scale_down() {
  local rest=() via=() h leader target endpoints join
  for h in "${METAS[@]}"; do [[ $h == "$NODE_HOST" ]] || rest+=("$h"); done
  (( ${#rest[@]} > 0 )) || die "refusing to remove the last meta node"
  # 1. is the node the leader? 2./3. transfer leadership and verify
  leader=$(leader_via "${rest[0]}")
  if [[ $leader == "$NODE_ID" ]]; then
    r "$NODE_HOST" "cd /tmp && databend-metactl transfer-leader --admin-api-address $(ip_of "$NODE_HOST"):$ADMIN_PORT"
    moved() { local l; l=$(leader_via "${rest[0]}"); [[ -n $l && $l != "$NODE_ID" ]]; }
    poll moved "leadership moved off meta-$NODE_ID"
  fi
  # 4. leave via the remaining nodes
  for h in "${rest[@]}"; do via+=(--leave-via "$(ip_of "$h"):$RAFT_PORT"); done
  r "${rest[0]}" "cd / && sudo -u databend databend-meta --config-file $META_TOML --leave-id $NODE_ID ${via[*]}"
  # 5. verify the node is removed
  removed() { [[ " $(voters_via "${rest[0]}") " != *" $NODE_ID "* ]]; }
  poll removed "meta-$NODE_ID removed"
  # 6. stop the service (and keep the removed node from re-joining: disable, retire its raft dir)
  r "$NODE_HOST" "sudo systemctl disable --now databend-meta && sudo mv /var/lib/databend/raft" \
    "/var/lib/databend/raft.removed-\$(date +%s) && sudo install -d -o databend -g databend /var/lib/databend/raft"
  # 7. verify the cluster from a remaining node: a leader and the expected voters
  stable() { [[ -n $(leader_via "${rest[0]}") && " $(voters_via "${rest[0]}") " != *" $NODE_ID "* ]]; }
  poll stable "a stable cluster without meta-$NODE_ID"
  # 8. join on the remaining nodes; 9. query endpoints
  join=$(toml_list $RAFT_PORT "${rest[@]}")
  endpoints=$(toml_list $GRPC_PORT "${rest[@]}")
  for h in "${rest[@]}"; do set_join "$h" "$join"; done
  for h in "${QUERIES[@]}"; do set_endpoints "$h" "$endpoints"; done
}

case $ACTION in
  up) scale_up ;;
  down) scale_down ;;
  *) die "action must be up or down, got '$ACTION'" ;;
esac
