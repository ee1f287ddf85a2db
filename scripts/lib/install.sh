# shellcheck shell=bash
# Installation: Debian packages (PostgreSQL, kcat, Prometheus and promtool for the
# metrics tests), TimescaleDB (built from Debian trixie's source package against
# PostgreSQL 15) and the Kafka broker jars (via Maven).
# Sourced by scripts/stack.sh after common.sh.

PG_MAJOR=15
PG_BIN="/usr/lib/postgresql/$PG_MAJOR/bin"
PG_PKGLIBDIR="/usr/lib/postgresql/$PG_MAJOR/lib"
PG_EXTDIR="/usr/share/postgresql/$PG_MAJOR/extension"

# Upstream version we expect from trixie's `timescaledb` source package. If
# trixie moves on, the newest one there is built and remembered in a stamp.
TSDB_VERSION="${PULSE_TIMESCALEDB_VERSION:-2.19.3}"
TSDB_CACHE="$CACHE_DIR/timescaledb"
TSDB_STAMP="$TSDB_CACHE/installed-version"

TRIXIE_SRC_LIST=/etc/apt/sources.list.d/pulse-trixie-src.sources

APT_PACKAGES=(
  "postgresql-$PG_MAJOR" "postgresql-client-$PG_MAJOR"
  kcat
  # Prometheus server and promtool: the metrics tests run their own server (never the
  # package's service, see disable_prometheus_service)
  prometheus
  # TimescaleDB build dependencies
  dpkg-dev cmake gcc make "postgresql-server-dev-$PG_MAJOR" libssl-dev libkrb5-dev
)

apt_missing_packages() {
  local pkgs=("${APT_PACKAGES[@]}")
  command -v java >/dev/null 2>&1 || pkgs+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null 2>&1 || pkgs+=(maven)
  # One dpkg-query call; packages unknown to dpkg are reported on stderr.
  local installed
  installed="$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${pkgs[@]}" 2>/dev/null \
    | awk '$2 == "installed" { print $1 }' || true)"
  local p
  for p in "${pkgs[@]}"; do
    grep -qx -- "$p" <<<"$installed" || printf '%s\n' "$p"
  done
}

# Debian's prometheus package enables and starts a system service (port 9090). Pulse
# only needs the binaries: stop and disable the service right after installing it.
disable_prometheus_service() {
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  elif [[ -x /etc/init.d/prometheus ]]; then
    /etc/init.d/prometheus stop >/dev/null 2>&1 || true
    command -v update-rc.d >/dev/null 2>&1 && { update-rc.d prometheus disable >/dev/null 2>&1 || true; }
  fi
  return 0
}

# ---- TimescaleDB -----------------------------------------------------------

tsdb_version_present() {
  local v="$1"
  [[ -n "$v" && -f "$PG_PKGLIBDIR/timescaledb-$v.so" && -f "$PG_PKGLIBDIR/timescaledb.so" \
     && -f "$PG_EXTDIR/timescaledb--$v.sql" && -f "$PG_EXTDIR/timescaledb.control" ]]
}

# Prints the installed TimescaleDB version when it is one we expect.
tsdb_installed_version() {
  if tsdb_version_present "$TSDB_VERSION"; then
    printf '%s\n' "$TSDB_VERSION"; return 0
  fi
  if [[ -f "$TSDB_STAMP" ]]; then
    local v; v="$(<"$TSDB_STAMP")"
    if tsdb_version_present "$v"; then printf '%s\n' "$v"; return 0; fi
  fi
  return 1
}

# Prints "URI<TAB>SIGNED-BY" of the machine's bookworm main entry.
bookworm_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f "$f" && "$f" != "$TRIXIE_SRC_LIST" ]] || continue
    awk '
      function flush() {
        if (types ~ /(^|[ \t])deb([ \t]|$)/ && suites ~ /(^|[ \t])bookworm([ \t]|$)/ && uris != "" && !found) {
          split(uris, u, /[ \t]+/); printf "%s\t%s\n", u[1], signed; found = 1
        }
        types = suites = uris = signed = ""
      }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      {
        line = $0; key = tolower(line); sub(/:.*/, "", key); sub(/^[^:]*:[ \t]*/, "", line)
        if (key == "types") types = line
        else if (key == "suites") suites = line
        else if (key == "uris") uris = line
        else if (key == "signed-by") signed = line
        else if (key == "enabled" && tolower(line) == "no") types = ""
      }
      END { flush() }
    ' "$f" | head -n1 | grep . && return 0
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f "$f" ]] || continue
    awk '
      /^[ \t]*deb[ \t]/ {
        line = $0; signed = ""
        if (match(line, /\[[^]]*\]/)) {
          opts = substr(line, RSTART + 1, RLENGTH - 2)
          if (match(opts, /signed-by=[^ \t]+/)) signed = substr(opts, RSTART + 10, RLENGTH - 10)
          sub(/\[[^]]*\]/, "", line)
        }
        n = split(line, w, /[ \t]+/); i = 1; if (w[1] == "") i = 2
        # w[i] = deb, w[i+1] = URI, w[i+2] = suite
        if (w[i + 2] == "bookworm") { printf "%s\t%s\n", w[i + 1], signed; exit }
      }
    ' "$f" | head -n1 | grep . && return 0
  done
  return 1
}

# Adds a deb-src-only trixie entry (source packages only; never binaries).
# Returns 0 when the file was created or changed.
ensure_trixie_src() {
  local line uri signed content
  line="$(bookworm_mirror)" || die "cannot find the machine's bookworm apt entry (in /etc/apt/sources.list.d/*.sources or sources.list)"
  uri="${line%%$'\t'*}"; signed="${line#*$'\t'}"
  content="# Added by Pulse scripts/stack.sh: trixie SOURCE packages only (to build
# TimescaleDB for PostgreSQL $PG_MAJOR). Mirror taken from the bookworm entry.
Types: deb-src
URIs: $uri
Suites: trixie
Components: main"
  [[ -n "$signed" ]] && content+=$'\n'"Signed-By: $signed"
  if [[ -f "$TRIXIE_SRC_LIST" ]] && [[ "$(<"$TRIXIE_SRC_LIST")" == "$content" ]]; then
    return 1
  fi
  log "adding deb-src entry for trixie ($uri) in $TRIXIE_SRC_LIST"
  printf '%s\n' "$content" >"$TRIXIE_SRC_LIST"
  return 0
}

build_timescaledb() {
  local work="$TSDB_CACHE/build"
  local pg_config="$PG_BIN/pg_config"
  [[ -x "$pg_config" ]] || pg_config="$(command -v pg_config)"
  [[ -x "$pg_config" ]] && "$pg_config" --version | grep -q " $PG_MAJOR\." \
    || die "pg_config for PostgreSQL $PG_MAJOR not found (postgresql-server-dev-$PG_MAJOR?)"

  rm -rf "$work"; mkdir -p "$work"
  log "fetching trixie source package timescaledb into $work"
  ( cd "$work" && apt-get -q -o APT::Sandbox::User=root source timescaledb/trixie ) \
    >"$work/apt-source.log" 2>&1 \
    || { tail -n 30 "$work/apt-source.log" >&2; die "apt-get source timescaledb/trixie failed"; }
  local src
  src="$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'timescaledb-*' | head -n1)"
  [[ -n "$src" ]] || die "no timescaledb source tree in $work"
  local version
  version="$(sed -n 's/^version = //p' "$src/version.config" 2>/dev/null | head -n1)"
  [[ -n "$version" ]] || version="$(basename "$src" | sed -e 's/^timescaledb-//' -e 's/+.*//')"
  [[ "$version" == "$TSDB_VERSION" ]] \
    || log "note: trixie has TimescaleDB $version (expected $TSDB_VERSION); building $version"

  log "building TimescaleDB $version (Apache-2 edition) for PostgreSQL $PG_MAJOR"
  {
    cmake -S "$src" -B "$src/build" -DPG_CONFIG="$pg_config" \
      -DAPACHE_ONLY=1 -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF \
      -DSEND_TELEMETRY_DEFAULT=OFF -DUSE_TELEMETRY=OFF \
      -DWARNINGS_AS_ERRORS=OFF -DCMAKE_BUILD_TYPE=Release &&
    make -C "$src/build" -j"$(nproc)" &&
    make -C "$src/build" install
  } >"$work/build.log" 2>&1 || { tail -n 40 "$work/build.log" >&2; die "TimescaleDB build failed (log: $work/build.log)"; }

  tsdb_version_present "$version" || die "TimescaleDB $version built but not found in $PG_PKGLIBDIR"
  printf '%s\n' "$version" >"$TSDB_STAMP"
  # Keep only the logs; the source tree is cheap to fetch again.
  rm -rf "$src" "$work"/*.tar.* "$work"/*.dsc
  log "TimescaleDB $version installed"
}

# ---- Kafka jars -------------------------------------------------------------

KAFKA_POM="$INFRA_DIR/kafka/pom.xml"

kafka_version() {
  if [[ -n "${PULSE_KAFKA_VERSION:-}" ]]; then printf '%s\n' "$PULSE_KAFKA_VERSION"; return; fi
  sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$KAFKA_POM" | head -n1
}
KAFKA_VERSION="$(kafka_version)"
[[ -n "$KAFKA_VERSION" ]] || die "cannot read <kafka.version> from $KAFKA_POM"
KAFKA_HOME="$CACHE_DIR/kafka-$KAFKA_VERSION"
KAFKA_LIBS="$KAFKA_HOME/libs"
KAFKA_STAMP="$KAFKA_HOME/.resolved"

kafka_stamp_value() {
  printf '%s %s\n' "$KAFKA_VERSION" "$(sha256sum "$KAFKA_POM" | cut -d' ' -f1)"
}

kafka_jars_present() {
  [[ -f "$KAFKA_STAMP" && "$(<"$KAFKA_STAMP")" == "$(kafka_stamp_value)" ]] \
    && compgen -G "$KAFKA_LIBS/kafka_2.13-*.jar" >/dev/null
}

install_kafka_jars() {
  if kafka_jars_present; then return 0; fi
  command -v mvn >/dev/null 2>&1 || die "mvn not found"
  log "resolving Kafka $KAFKA_VERSION jars with Maven into $KAFKA_LIBS"
  local build="$KAFKA_HOME/build.$$"
  rm -rf "$build"; mkdir -p "$build"
  cp "$KAFKA_POM" "$build/pom.xml"
  ( cd "$build" && mvn -B -q -Dkafka.version="$KAFKA_VERSION" \
      dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$build/libs" ) \
    >"$build/mvn.log" 2>&1 \
    || { tail -n 40 "$build/mvn.log" >&2; die "Maven could not resolve Kafka $KAFKA_VERSION"; }
  compgen -G "$build/libs/kafka_2.13-*.jar" >/dev/null || die "Maven produced no kafka_2.13 jar"
  rm -rf "$KAFKA_LIBS"
  mv "$build/libs" "$KAFKA_LIBS"
  rm -rf "$build"
  kafka_stamp_value >"$KAFKA_STAMP"
  log "Kafka $KAFKA_VERSION: $(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars in $KAFKA_LIBS"
}

# ---- entry point --------------------------------------------------------------

installed_everything() {
  [[ -z "$(apt_missing_packages)" ]] && tsdb_installed_version >/dev/null && kafka_jars_present
}

stack_install() {
  lock_install
  local missing need_tsdb=0
  mapfile -t missing < <(apt_missing_packages)
  tsdb_installed_version >/dev/null || need_tsdb=1

  if (( ${#missing[@]} > 0 || need_tsdb )); then
    (( IS_ROOT )) || die "installing needs root (missing: ${missing[*]:-} $( ((need_tsdb)) && echo timescaledb))"
    (( need_tsdb )) && { ensure_trixie_src || true; }
    log "apt-get update"
    apt-get -q -o DPkg::Lock::Timeout=600 update >"$CACHE_DIR/apt-update.log" 2>&1 \
      || { tail -n 20 "$CACHE_DIR/apt-update.log" >&2; die "apt-get update failed"; }
    if (( ${#missing[@]} > 0 )); then
      log "apt-get install ${missing[*]}"
      apt-get -q -y -o DPkg::Lock::Timeout=600 install --no-install-recommends "${missing[@]}" \
        >"$CACHE_DIR/apt-install.log" 2>&1 </dev/null \
        || { tail -n 30 "$CACHE_DIR/apt-install.log" >&2; die "apt-get install failed (log: $CACHE_DIR/apt-install.log)"; }
      if printf '%s\n' "${missing[@]}" | grep -qx prometheus; then
        log "disabling the prometheus system service (only its binaries are used)"
        disable_prometheus_service
      fi
    fi
    if (( need_tsdb )); then
      mkdir -p "$TSDB_CACHE"
      build_timescaledb
    fi
  fi
  install_kafka_jars
  log "installed: PostgreSQL $PG_MAJOR, TimescaleDB $(tsdb_installed_version), Kafka $KAFKA_VERSION, kcat, prometheus, promtool"
}
