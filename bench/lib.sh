# Shell functions shared by the benchmarks (bench/lazy.sh, bench/coldstart.sh, bench/convert.sh); sourced, not run.
# The shaped link: a registry in the network namespace $NS behind the veth pair $HV (host side,
# $HOST_IP) / $NV (namespace side, $NS_IP), tc tbf $RATE each way, and a small python3 proxy on
# 127.0.0.1 that adds a delay each way (netem is not in every kernel).
# The caller sets NS HV NV HOST_IP NS_IP RATE and SCRATCH (its temporary directory), and keeps
# the processes started here in the array PIDS (to stop them at exit; net_down removes the rest).

die() { echo "error: $*" >&2; exit 1; }
now() { date +%s.%N; }; since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.3f", b - a}'; }
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
wire() { cat "/sys/class/net/$HV/statistics/rx_bytes"; }   # bytes the host received from the registry's namespace
mb() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1e6}'; }
median() { tr ' ' '\n' <<<"$1" | awk NF | sort -g | awk '{a[NR] = $1} END {if (NR) print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; else print "-"}'; }

# Whether neither the namespace nor the host's veth end exists yet.
net_free() { ! ip netns list | grep -qw "$NS" && ! ip link show "$HV" >/dev/null 2>&1; }
net_up() {
    ip netns add "$NS" && ip link add "$HV" type veth peer name "$NV" && ip link set "$NV" netns "$NS"
    ip addr add "$HOST_IP/30" dev "$HV" && ip link set "$HV" up
    ip -n "$NS" addr add "$NS_IP/30" dev "$NV" && ip -n "$NS" link set "$NV" up && ip -n "$NS" link set lo up
}
net_down() { ip netns del "$NS" 2>/dev/null; ip link del "$HV" 2>/dev/null; }   # deleting the netns deletes the veth pair

# registry_up DATA ADDR: docker-registry in the namespace on ADDR, storage in DATA; waits until it answers.
registry_up() {
    local data=$1 addr=$2 i
    printf 'version: 0.1\nlog: {level: warn, accesslog: {disabled: true}}\nstorage: {filesystem: {rootdirectory: "%s"}, %s}\nhttp: {addr: "%s", secret: naiad-bench}\n' \
        "$data" "maintenance: {uploadpurging: {enabled: false}}" "$addr" >"$SCRATCH/registry.yml"
    ip netns exec "$NS" env $(compgen -e | grep '^REGISTRY_' | sed 's/^/-u /') docker-registry serve "$SCRATCH/registry.yml" >"$SCRATCH/registry.log" 2>&1 & PIDS+=($!)
    for i in {1..100}; do curl -sf "http://$addr/v2/" >/dev/null && break; sleep 0.2; done
    curl -sf "http://$addr/v2/" >/dev/null || { cat "$SCRATCH/registry.log" >&2; die "docker-registry did not start on $addr"; }
}

# The rate limit, both directions.
shape_link() {
    tc qdisc add dev "$HV" root tbf rate $RATE burst 32kbit latency 400ms
    ip netns exec "$NS" tc qdisc add dev "$NV" root tbf rate $RATE burst 32kbit latency 400ms
}

# delay_proxy ADDR DELAY_MS: sets REGHOST (where clients reach the registry at ADDR: the proxy,
# or ADDR itself if DELAY_MS is 0 or the proxy failed), LAT_NOTE (which of those) and PROXY_PID.
# The proxy: every chunk read from one side is written to the other DELAY later (a queue per
# direction, so the delay adds latency without limiting throughput).
delay_proxy() {
    local addr=$1 delay=$2 i proxy
    cat >"$SCRATCH/delay.py" <<'EOF'
import asyncio, sys, time
host, port = sys.argv[1].rsplit(":", 1); delay = float(sys.argv[2]) / 1000
async def pump(r, w):
    q = asyncio.Queue()
    async def read():
        while True:
            try: d = await r.read(1 << 16)
            except OSError: d = b""
            q.put_nowait((time.monotonic() + delay, d))
            if not d: return
    t = asyncio.ensure_future(read())
    try:
        while True:
            due, d = await q.get()
            await asyncio.sleep(max(0, due - time.monotonic()))
            if not d: w.write_eof() if w.can_write_eof() else None; return
            w.write(d); await w.drain()
    except OSError: pass
    finally: t.cancel()
async def conn(cr, cw):
    try: ur, uw = await asyncio.open_connection(host, int(port))
    except OSError: cw.close(); return
    await asyncio.gather(pump(cr, uw), pump(ur, cw), return_exceptions=True); cw.close(); uw.close()
async def main():
    s = await asyncio.start_server(conn, "127.0.0.1", 0)
    open(sys.argv[3], "w").write(str(s.sockets[0].getsockname()[1]))
    await s.serve_forever()
asyncio.run(main())
EOF
    REGHOST=$addr LAT_NOTE="no extra latency added (BENCH_DELAY_MS=0)" PROXY_PID=""
    if ((delay > 0)); then
        python3 "$SCRATCH/delay.py" "$addr" "$delay" "$SCRATCH/proxy.port" >"$SCRATCH/proxy.log" 2>&1 & PIDS+=($!) PROXY_PID=$!
        for i in {1..50}; do [[ -s $SCRATCH/proxy.port ]] && break; sleep 0.1; done
        proxy=127.0.0.1:$(cat "$SCRATCH/proxy.port" 2>/dev/null || echo 0)
        if curl -sf "http://$proxy/v2/" >/dev/null 2>&1; then REGHOST=$proxy LAT_NOTE="delay proxy on $proxy adds $delay ms each way"
        else LAT_NOTE="no extra latency added: the delay proxy failed ($(tail -1 "$SCRATCH/proxy.log"))"; fi
    fi
}
rtt() { for i in 1 2 3 4 5; do curl -s -o /dev/null -w '%{time_starttransfer} %{time_pretransfer}\n' "http://$1/v2/"; done |
    awk '{d = ($1 - $2) * 1000; if (NR == 1 || d < m) m = d} END {printf "%.1f", m}'; }   # the fastest of 5, ms

# The machine, for the report's header.
machine() { echo "$(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(uname -r), $(awk '/MemTotal/ {printf "%.0f GB RAM", $2 / 1e6}' /proc/meminfo)"; }

# The Debian mirror apt uses: the first enabled `deb` source for bookworm (as the tests find it: crates/naiad/tests/e2e/support/registry.rs).
mirror() {
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*; do
        [[ -f $f ]] || continue
        case $f in
        *.sources) awk 'BEGIN {RS = ""} { delete F; n = split($0, L, "\n")   # deb822 stanzas
                for (i = 1; i <= n; i++) if (L[i] !~ /^[ \t]*#/ && (j = index(L[i], ":"))) {
                    k = tolower(substr(L[i], 1, j - 1)); gsub(/[ \t]/, "", k); F[k] = F[k] " " substr(L[i], j + 1) " " }
                if (tolower(F["enabled"]) !~ /no/ && F["types"] ~ /[ \t]deb[ \t]/ && F["suites"] ~ /[ \t]bookworm[ \t]/) {
                    split(F["uris"], U, " "); print U[1]; exit } }' "$f" ;;
        *.list | */sources.list) awk '{sub(/#.*/, "")} $1 == "deb" {
                i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/ && i < NF) i++; i++ }
                if ($(i + 1) == "bookworm") { print $i; exit } }' "$f" ;;
        esac
    done | head -1
}
