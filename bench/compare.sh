#!/usr/bin/env bash
# bench/compare.sh: attrelay against a private Postfix on this machine, in one
# run, the two systems taking turns, so the results compare as ratios.
#
# Usage: bench/compare.sh [--rounds N] [--smoke] [--attrelay PATH] [--work DIR]
#                         [--out FILE] [--keep] [--help]
# or the same as environment variables: ROUNDS (5), SMOKE=1 (one round, a few
# hundred messages: a CI check, under a minute), ATTRELAY (default
# target/release/attrelay in the repository; nothing is built), WORK (default:
# a new mktemp -d directory, removed at the end unless KEEP=1), OUT (results
# TSV; default ./compare-DATE.tsv). Scale: N, ONE_SESSIONS, MULTI_SESSIONS,
# MULTI_PER_SESSION, TLS_SESSIONS, TLS_CONCURRENCY, TLS_PER_SESSION, BIG_N,
# BIG_SESSIONS, SIZE, BIG_SIZE, TIMEOUT (seconds per run), PAUSE (seconds),
# SCENARIOS (a space-separated subset of "one multi tls big").
# Needs root (Postfix's master, smtp-sink -u nobody), Postfix with
# smtp-source/smtp-sink, openssl and ss.
#
# Scenarios, each run against both systems in every round:
#   one    smtp-source -s 20 -m N -l 4096: one message per connection
#   multi  smtp-source -d -s 8 -m 800: 8 connections sending 100 messages each
#   tls    attrelay bench --starttls with a client certificate and its chain,
#          from 127.0.0.2, which only the certificate connector authorises;
#          Postfix asks attrelay's [policyd] through check_policy_service
#   big    smtp-source -s 8 -m 200 -l 1048576: 1 MiB messages
# Each system relays to its own smtp-sink (started once, running throughout).
# Accepted msg/s: messages / the client's elapsed time (every reply checked:
# smtp-source aborts on an unexpected reply, attrelay bench exits 1).
# Delivered msg/s: messages / the time from the client's start until the
# sink's message counter (smtp-sink -c, written to a file, polled every 20 ms)
# has grown by the run's message count. Both systems fsync before their 250.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() { echo "compare.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case $1 in
    --rounds) ROUNDS=${2:?--rounds needs a number}; shift 2 ;;
    --smoke) SMOKE=1; shift ;;
    --attrelay) ATTRELAY=${2:?--attrelay needs a path}; shift 2 ;;
    --work) WORK=${2:?--work needs a directory}; shift 2 ;;
    --out) OUT=${2:?--out needs a file}; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "compare.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done

# ---- settings ---------------------------------------------------------------
if [ "${SMOKE:-0}" = 1 ]; then
  : "${ROUNDS:=1}" "${N:=200}" "${MULTI_SESSIONS:=2}" "${MULTI_PER_SESSION:=50}"
  : "${TLS_SESSIONS:=100}" "${BIG_N:=16}" "${TIMEOUT:=60}"
fi
: "${ROUNDS:=5}" "${N:=5000}" "${ONE_SESSIONS:=20}"
: "${MULTI_SESSIONS:=8}" "${MULTI_PER_SESSION:=100}"
: "${TLS_SESSIONS:=2000}" "${TLS_CONCURRENCY:=20}" "${TLS_PER_SESSION:=1}"
: "${BIG_N:=200}" "${BIG_SESSIONS:=8}" "${SIZE:=4096}" "${BIG_SIZE:=1048576}"
: "${TIMEOUT:=600}" "${PAUSE:=1}" "${KEEP:=0}"
: "${ATTRELAY:=$REPO/target/release/attrelay}"
: "${OUT:=$PWD/compare-$(date +%Y%m%d-%H%M%S).tsv}"
read -ra SCENARIOS <<< "${SCENARIOS:-one multi tls big}"
FROM=bench@bench.test            # tenant "bench": IP connector for 127.0.0.1
TLS_FROM=john@contoso.com        # tenant "contoso": certificate connector only
TO=someone@example.net

[ -x "$ATTRELAY" ] || die "no attrelay binary at $ATTRELAY: build it (cargo build --release) or set ATTRELAY"
[ "$(id -u)" = 0 ] || die "needs root: Postfix's master must start as root"
for tool in postfix postconf smtp-source smtp-sink openssl ss awk; do
  command -v "$tool" >/dev/null || die "$tool not found (Debian: postfix, openssl, iproute2)"
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive number"

OWN_WORK=0
if [ -z "${WORK:-}" ]; then WORK=$(mktemp -d /tmp/attrelay-compare.XXXXXX); OWN_WORK=1; fi
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
chmod 755 "$WORK"                # Postfix's daemons (user postfix) must reach their queue

# ---- cleanup: everything started here is stopped on exit, failure included ---
PIDS=()                          # attrelay and the sinks
PF=$WORK/postfix                 # the private Postfix instance's directory
PF_STARTED=0
CLIENT_PID=                      # the load client running, if any
cleanup() {
  local rc=$? pid
  set +e
  [ -n "$CLIENT_PID" ] && { kill "$CLIENT_PID"; wait "$CLIENT_PID"; } 2>/dev/null
  if [ "$PF_STARTED" = 1 ]; then
    postfix -c "$PF/etc" stop >/dev/null 2>&1
    pid=$(tr -dc 0-9 <"$PF/queue/pid/master.pid" 2>/dev/null)
    for _ in $(seq 100); do [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  if [ "$rc" != 0 ]; then
    for log in "$WORK/client.log" "$WORK/attrelay/attrelay.log" "$PF/maillog"; do
      [ -s "$log" ] && { echo "--- $log (last lines)" >&2; grep -v 'INFO attrelay::decision' "$log" | tail -n 12 >&2; }
    done
  fi
  if [ "$KEEP" = 1 ]; then echo "work directory kept: $WORK" >&2
  elif [ "$OWN_WORK" = 1 ]; then rm -rf "$WORK"
  else rm -rf "$WORK/pki" "$WORK/attrelay" "$PF" "$WORK"/sink-*
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- helpers ----------------------------------------------------------------
USED_PORTS=" "
# Ports below the kernel's ephemeral range, which outgoing connections (the
# relays' own, to their sinks) take their ports from: a port picked there
# could be taken by one of them before Postfix binds it.
EPHEMERAL_LOW=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
[ "$EPHEMERAL_LOW" -gt 11000 ] || EPHEMERAL_LOW=32768
free_port() {                    # free_port VAR: a loopback TCP port nobody uses
  local p
  while :; do
    p=$((10000 + RANDOM % (EPHEMERAL_LOW - 10000)))
    [[ $USED_PORTS == *" $p "* ]] && continue
    [ -z "$(ss -Htan "sport = :$p")" ] || continue
    USED_PORTS+="$p "; printf -v "$1" %s "$p"; return
  done
}
wait_listen() {                  # wait_listen PORT WHAT PID: until 127.0.0.1:PORT listens
  for _ in $(seq 600); do
    [ -n "$(ss -Htln "src 127.0.0.1 and sport = :$1")" ] && return
    [ -z "${3:-}" ] || kill -0 "$3" 2>/dev/null || die "$2 exited before listening"
    sleep 0.1
  done
  die "$2 did not listen on 127.0.0.1:$1 within 60 s"
}
now_us() { echo "${EPOCHREALTIME//[!0-9]/}"; }        # microseconds, integer
rate() { awk -v n="$1" -v us="$2" 'BEGIN { printf "%.1f", n * 1e6 / us }'; }

# smtp-sink -c writes "sess=S quit=Q mesg=M\r" after every message and session
# end; the message count is the last complete record's mesg=.
sink_count() {
  local s
  s=$(tail -c 160 "$WORK/sink-$1.count")
  s=${s%$'\r'*}; s=${s##*=}
  [[ $s =~ ^[0-9]+$ ]] && echo "$s" || echo 0
}

# ---- the machine -------------------------------------------------------------
describe_machine() {
  echo "== machine"
  echo "cpus:     $(nproc) x$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2-)"
  echo "memory:   $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
  echo "kernel:   $(uname -srm)"
  echo "work dir: $WORK: $(df -T "$WORK" | awk 'NR == 2 { print $2 " on " $1 }')" \
       "$(command -v findmnt >/dev/null && findmnt -no OPTIONS -T "$WORK")"
  echo "load avg: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews both systems)"
  echo "attrelay: $("$ATTRELAY" --version) ($ATTRELAY); Postfix $(postconf -dh mail_version)"
}

# ---- PKI: root CA, issuing CA, server and client leaves with their chains ----
PKI=$WORK/pki
make_pki() {
  mkdir -p "$PKI"
  local log=$PKI/openssl.log
  ext() { printf '%s\n' "$@" >"$PKI/ext.cnf"; }
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=attrelay bench Root CA" \
    -keyout "$PKI/ca.key" -out "$PKI/ca.pem" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>>"$log"
  sign() {                       # sign NAME CN ISSUER [extensions...]
    local name=$1 cn=$2 issuer=$3; shift 3
    openssl req -new -newkey rsa:2048 -nodes -subj "/CN=$cn" \
      -keyout "$PKI/$name.key" -out "$PKI/$name.csr" 2>>"$log"
    ext "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid" "$@"
    openssl x509 -req -days 3650 -in "$PKI/$name.csr" -CA "$PKI/$issuer.pem" \
      -CAkey "$PKI/$issuer.key" -CAcreateserial -extfile "$PKI/ext.cnf" \
      -out "$PKI/$name.pem" 2>>"$log"
  }
  sign issuing "attrelay bench Issuing CA" ca \
    "basicConstraints=critical,CA:TRUE,pathlen:0" "keyUsage=critical,keyCertSign,cRLSign"
  sign server relay.bench.test issuing "basicConstraints=CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" \
    "subjectAltName=DNS:relay.bench.test,DNS:postfix.bench.test"
  # The tenant's on-premises server: CN/SAN mail.contoso.com, which the
  # connector name *.contoso.com matches (Postfix forwards the CN only).
  sign client mail.contoso.com issuing "basicConstraints=CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=clientAuth" \
    "subjectAltName=DNS:mail.contoso.com"
  cat "$PKI/server.pem" "$PKI/issuing.pem" >"$PKI/server-chain.pem"
  cat "$PKI/client.pem" "$PKI/issuing.pem" >"$PKI/client-chain.pem"
  openssl verify -CAfile "$PKI/ca.pem" -untrusted "$PKI/issuing.pem" \
    "$PKI/server.pem" "$PKI/client.pem" >>"$log" || die "the generated PKI does not verify"
}

# ---- the next hops: one smtp-sink per system, counting messages --------------
declare -A SINK_PORT
start_sink() {                   # start_sink SYSTEM
  free_port "SINK_PORT[$1]"
  smtp-sink -u nobody -c "127.0.0.1:${SINK_PORT[$1]}" 1024 \
    >"$WORK/sink-$1.count" 2>"$WORK/sink-$1.log" &
  PIDS+=($!)
  wait_listen "${SINK_PORT[$1]}" "smtp-sink for $1" $!
}

# ---- attrelay: IP connector for 127.0.0.1, certificate connector for TLS -----
start_attrelay() {
  local d=$WORK/attrelay
  mkdir -p "$d"
  free_port AR_PORT; free_port AR_POLICYD
  # Delivery concurrency 20 = Postfix's default_destination_concurrency_limit.
  cat >"$d/relay.toml" <<EOF
[admin]
enabled = false
[server]
hostname = "relay.bench.test"
listen = ["127.0.0.1:$AR_PORT"]
tls_cert = "$PKI/server-chain.pem"
tls_key = "$PKI/server.key"
client_ca = ["$PKI/ca.pem"]
max_sessions = 512
shutdown_grace_secs = 5
[spool]
path = "spool"
[delivery]
next_hop = "127.0.0.1:${SINK_PORT[attrelay]}"
concurrency = 20
[policyd]                        # for Postfix's check_policy_service in scenario tls
listen = ["127.0.0.1:$AR_POLICYD"]

[[tenant]]
id = "bench"
accepted_domains = ["bench.test"]
[[tenant.connector]]
name = "Bench on-premises"
type = "on-premises"
sender_ip_addresses = ["127.0.0.1"]

[[tenant]]
id = "contoso"
accepted_domains = ["contoso.com"]
[[tenant.connector]]
name = "Contoso on-premises"
type = "on-premises"
tls_sender_certificate_name = "*.contoso.com"
EOF
  "$ATTRELAY" serve --config "$d/relay.toml" >"$d/attrelay.log" 2>&1 &
  PIDS+=($!)
  wait_listen "$AR_PORT" attrelay $!
  wait_listen "$AR_POLICYD" "attrelay's policyd" $!
}

# ---- Postfix: a private instance, two smtpd ports ----------------------------
# PF_PORT: permit_mynetworks, no TLS (scenarios one, multi, big).
# PF_TLS_PORT: STARTTLS asking for client certificates, relaying decided by
# attrelay's policy service (scenario tls).
start_postfix() {
  mkdir -p "$PF/etc" "$PF/queue" "$PF/data"
  chown postfix "$PF/data"
  chmod 755 "$PF"
  free_port PF_PORT; free_port PF_TLS_PORT
  cat >"$PF/etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $PF/queue
data_directory = $PF/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.test
mydomain = bench.test
myorigin = \$myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:${SINK_PORT[postfix]}
smtp_tls_security_level = none
# attrelay does no DNS either
smtpd_peername_lookup = no
# no local delivery here: no alias maps to open (nor NIS to try) per smtpd
alias_maps =
alias_database =
default_process_limit = 100
maillog_file = $PF/maillog
maillog_file_prefixes = $PF
smtpd_relay_restrictions = permit_mynetworks, reject
policy_relay_restrictions = check_policy_service inet:127.0.0.1:$AR_POLICYD, reject
EOF
  cat >"$PF/etc/master.cf" <<EOF
127.0.0.1:$PF_PORT inet n - n - - smtpd
127.0.0.1:$PF_TLS_PORT inet n - n - - smtpd
  -o smtpd_tls_security_level=may
  -o smtpd_tls_ask_ccert=yes
  -o smtpd_tls_CAfile=$PKI/ca.pem
  -o smtpd_tls_cert_file=$PKI/server-chain.pem
  -o smtpd_tls_key_file=$PKI/server.key
  -o smtpd_relay_restrictions=\$policy_relay_restrictions
EOF
  cat "$REPO/tests/it/support/postfix-services.cf" >>"$PF/etc/master.cf"
  PF_STARTED=1
  postfix -c "$PF/etc" start >"$PF/start.log" 2>&1 || die "postfix start failed: $(cat "$PF/start.log") (its maillog follows)"
  wait_listen "$PF_PORT" Postfix
  wait_listen "$PF_TLS_PORT" "Postfix (TLS port)"
}

# ---- scenarios ---------------------------------------------------------------
describe() {
  case $1 in
    one)   echo "(a) one message per connection: smtp-source -s $ONE_SESSIONS -m $N -l $SIZE" ;;
    multi) echo "(b) $MULTI_SESSIONS connections x $MULTI_PER_SESSION messages: smtp-source -d -s $MULTI_SESSIONS -m $((MULTI_SESSIONS * MULTI_PER_SESSION)) -l $SIZE" ;;
    tls)   echo "(c) STARTTLS + client certificate: attrelay bench --concurrency $TLS_CONCURRENCY --sessions $TLS_SESSIONS --messages $TLS_PER_SESSION --size $SIZE" ;;
    big)   echo "(d) 1 MiB messages: smtp-source -s $BIG_SESSIONS -m $BIG_N -l $BIG_SIZE" ;;
  esac
}
total() {
  case $1 in
    one) echo "$N" ;; multi) echo $((MULTI_SESSIONS * MULTI_PER_SESSION)) ;;
    tls) echo $((TLS_SESSIONS * TLS_PER_SESSION)) ;; big) echo "$BIG_N" ;;
  esac
}
# client SYSTEM SCENARIO: one load run, every reply checked. Runs in a
# background subshell that execs `timeout`, so killing it stops the client.
client() {
  local port=$AR_PORT name=relay.bench.test
  [ "$1" = postfix ] && port=$PF_PORT
  [ "$1:$2" = postfix:tls ] && port=$PF_TLS_PORT name=postfix.bench.test
  local src=(timeout "$TIMEOUT" smtp-source -M client.bench.test -f "$FROM" -t "$TO")
  case $2 in
    one)   exec "${src[@]}" -s "$ONE_SESSIONS" -m "$N" -l "$SIZE" "127.0.0.1:$port" ;;
    # -d: don't disconnect after a message; the sessions share the -m total
    multi) exec "${src[@]}" -d -s "$MULTI_SESSIONS" -m "$(total multi)" -l "$SIZE" "127.0.0.1:$port" ;;
    big)   exec "${src[@]}" -s "$BIG_SESSIONS" -m "$BIG_N" -l "$BIG_SIZE" "127.0.0.1:$port" ;;
    # From 127.0.0.2: no IP connector covers it, only the certificate does.
    tls)   exec timeout "$TIMEOUT" "$ATTRELAY" bench --server "127.0.0.1:$port" --source 127.0.0.2 \
             --starttls --cert "$PKI/client-chain.pem" --key "$PKI/client.key" \
             --ca "$PKI/ca.pem" --server-name "$name" --helo mail.contoso.com \
             --concurrency "$TLS_CONCURRENCY" --sessions "$TLS_SESSIONS" \
             --messages "$TLS_PER_SESSION" --size "$SIZE" --from "$TLS_FROM" --to "$TO" ;;
  esac
}

# measure SYSTEM SCENARIO ROUND: one run; round 0 is a warm-up, not recorded.
measure() {
  local sys=$1 sc=$2 round=$3 n before t0 t1 t2 deadline
  n=$(total "$sc")
  before=$(sink_count "$sys")
  t0=$(now_us)
  client "$sys" "$sc" >"$WORK/client.log" 2>&1 &   # waited for: traps run at once
  CLIENT_PID=$!
  wait "$CLIENT_PID" || die "$sys, scenario $sc, round $round: the client failed (exit $?)"
  CLIENT_PID=
  t1=$(now_us)
  deadline=$((t1 + TIMEOUT * 1000000))
  while [ "$(sink_count "$sys")" -lt $((before + n)) ]; do
    [ "$(now_us)" -lt "$deadline" ] ||
      die "$sys, scenario $sc: $(($(sink_count "$sys") - before)) of $n messages delivered after $TIMEOUT s"
    sleep 0.02
  done
  t2=$(now_us)
  if [ "$round" -gt 0 ]; then
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$sc" "$sys" "$round" "$n" \
      "$(rate "$n" $((t1 - t0)))" "$(rate "$n" $((t2 - t0)))" >>"$OUT"
    printf '  round %s %-8s %-5s accepted %9s msg/s  delivered %9s msg/s\n' "$round" "$sys" "$sc" \
      "$(rate "$n" $((t1 - t0)))" "$(rate "$n" $((t2 - t0)))"
  fi
  sleep "$PAUSE"                 # let the system finish its bookkeeping (queue files, logs)
}

# summarize SCENARIO: prints the table and appends the ratio rows to $OUT.
summarize() {
  awk -F'\t' -v sc="$1" -v out="$OUT" '
    function sort(a, n,   i, j, t) { for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] > a[j]; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t } }
    function med(a, n) { return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2 }
    $1 == sc && ($2 == "attrelay" || $2 == "postfix") { acc[$2, $3] = $5; del[$2, $3] = $6; if ($3 > rounds) rounds = $3 }
    END {
      printf "%-7s %12s %12s %12s %12s %9s %9s\n", "round", "attrelay acc", "attrelay del", "postfix acc", "postfix del", "ratio acc", "ratio del"
      for (r = 1; r <= rounds; r++) {
        ra[r] = acc["attrelay", r] / acc["postfix", r]; rd[r] = del["attrelay", r] / del["postfix", r]
        printf "%-7s %12.1f %12.1f %12.1f %12.1f %9.2f %9.2f\n", r, acc["attrelay", r], del["attrelay", r], acc["postfix", r], del["postfix", r], ra[r], rd[r]
      }
      sort(ra, rounds); sort(rd, rounds)
      printf "ratio attrelay/postfix: accepted median %.2f (min %.2f, max %.2f); delivered median %.2f (min %.2f, max %.2f)\n", med(ra, rounds), ra[1], ra[rounds], med(rd, rounds), rd[1], rd[rounds]
      row = sc "\tattrelay/postfix\t%s\t-\t%.3f\t%.3f\n"
      printf row, "median", med(ra, rounds), med(rd, rounds) >> out
      printf row, "min", ra[1], rd[1] >> out; printf row, "max", ra[rounds], rd[rounds] >> out
    }' "$OUT"
}

# ---- the run -----------------------------------------------------------------
describe_machine
echo "== setup in $WORK"
make_pki
start_sink attrelay; start_sink postfix
start_attrelay; start_postfix
echo "attrelay 127.0.0.1:$AR_PORT (policyd $AR_POLICYD) -> sink ${SINK_PORT[attrelay]};" \
     "Postfix 127.0.0.1:$PF_PORT, TLS+policy $PF_TLS_PORT -> sink ${SINK_PORT[postfix]}"
printf 'scenario\tsystem\tround\tmessages\taccepted_msg_per_s\tdelivered_msg_per_s\n' >"$OUT"

echo "== warm-up (not recorded)"
for sys in attrelay postfix; do
  N=50 ONE_SESSIONS=10 measure "$sys" one 0
  TLS_SESSIONS=20 TLS_PER_SESSION=1 measure "$sys" tls 0
done

for round in $(seq "$ROUNDS"); do
  echo "== round $round of $ROUNDS"
  # Alternate which system goes first, so neither always runs on a machine
  # the other has just warmed (or left busy).
  if [ $((round % 2)) = 1 ]; then order=(attrelay postfix); else order=(postfix attrelay); fi
  for sc in "${SCENARIOS[@]}"; do
    for sys in "${order[@]}"; do measure "$sys" "$sc" "$round"; done
  done
done

echo
for sc in "${SCENARIOS[@]}"; do
  echo "== $(describe "$sc")   [msg/s]"
  summarize "$sc"
  echo
done
echo "results: $OUT"
