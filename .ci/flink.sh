#!/usr/bin/env bash
# Fetches (once, then cached) what the Flink tests run on, and prints where it is:
#   FLINK_HOME=...            a Flink 1.19.3 distribution (bin/, lib/, conf/) from the PyPI wheels
#                             apache-flink + apache-flink-libraries, in a virtual environment of its own
#   FLINK_JOB_SERVER_JAR=...  Beam's Flink job server: org.apache.beam:beam-runners-flink-1.19:2.62.0
#                             and its dependencies, resolved by Maven, launched through a manifest jar
#
# Why Beam 2.62.0 and not the apache-beam version the project installs (2.77.0): Maven Central, as this
# project's machines reach it, serves no beam-runners-flink-*-job-server jar at any version, and of
# beam-runners-flink-1.19 only 2.62.0 and 2.70.0, of which only 2.62.0 resolves with its dependencies
# (beam-runners-java-job-service 2.70.0 is not served). The Python 2.77 SDK submits to this job server
# through Beam's portable job API; tests/test_flink.py proves the rows equal the DirectRunner's.
#
# Progress goes to stderr; stdout carries only the two lines above. Cache: $BRE_CACHE, else
# ${XDG_CACHE_HOME:-~/.cache}/beam-recurrent-embeddings.
set -euo pipefail

FLINK_VERSION=1.19.3
BEAM_JAVA_VERSION=2.62.0
FLINK_MINOR=1.19
CACHE="${BRE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/beam-recurrent-embeddings}"
FLINK_DIR="$CACHE/flink-$FLINK_VERSION"
JS_DIR="$CACHE/beam-runners-flink-$FLINK_MINOR-$BEAM_JAVA_VERSION"
JAR="$JS_DIR/beam-runners-flink-$FLINK_MINOR-job-server-$BEAM_JAVA_VERSION.jar"
PYTHON="${PYTHON:-python}"

site_flink() { "$FLINK_DIR/venv/bin/python" -c 'import os, pyflink; print(os.path.dirname(pyflink.__file__))'; }

# 1. Flink: the wheels' Python dependencies (an old apache-beam among them) are not needed to run the
#    Java cluster, so they are installed with --no-deps, in a venv apart from the project's.
if [ ! -f "$FLINK_DIR/.done" ]; then
  echo "flink.sh: installing apache-flink==$FLINK_VERSION (+ libraries) into $FLINK_DIR/venv" >&2
  rm -rf "$FLINK_DIR" && mkdir -p "$FLINK_DIR"
  "$PYTHON" -m venv "$FLINK_DIR/venv"
  "$FLINK_DIR/venv/bin/python" -m pip install --quiet --no-deps \
    "apache-flink==$FLINK_VERSION" "apache-flink-libraries==$FLINK_VERSION" >&2
  home="$(site_flink)"
  test -x "$home/bin/jobmanager.sh" && test -f "$home/lib/flink-dist-$FLINK_VERSION.jar"
  touch "$FLINK_DIR/.done"
fi

# 2. The job server: Maven resolves the runner with its whole closure into lib/; a jar holding only a
#    manifest (Main-Class + Class-Path: lib/...) makes it runnable as `java -jar`, which is how Beam's
#    Python FlinkRunner starts --flink_job_server_jar.
if [ ! -f "$JS_DIR/.done" ]; then
  echo "flink.sh: resolving org.apache.beam:beam-runners-flink-$FLINK_MINOR:$BEAM_JAVA_VERSION with Maven" >&2
  rm -rf "$JS_DIR" && mkdir -p "$JS_DIR"
  cat > "$JS_DIR/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.bre</groupId><artifactId>flink-job-server</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.beam</groupId><artifactId>beam-runners-flink-$FLINK_MINOR</artifactId>
      <version>$BEAM_JAVA_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
  (cd "$JS_DIR" && mvn -B -q -Dstyle.color=never dependency:copy-dependencies -DoutputDirectory=lib >&2)
  "$PYTHON" - "$JS_DIR" "$JAR" <<'EOF'
import os, sys, zipfile
folder, jar = sys.argv[1], sys.argv[2]
line = "Class-Path: " + " ".join("lib/" + j for j in sorted(os.listdir(os.path.join(folder, "lib"))))
raw, chunks = line.encode(), []
while raw:  # manifest lines hold at most 72 bytes; continuation lines start with one space
    n = 72 if not chunks else 71
    chunks.append((b" " if chunks else b"") + raw[:n])
    raw = raw[n:]
manifest = (b"Manifest-Version: 1.0\r\nMain-Class: org.apache.beam.runners.flink.FlinkJobServerDriver\r\n"
            + b"\r\n".join(chunks) + b"\r\n\r\n")
with zipfile.ZipFile(jar, "w") as z:
    z.writestr("META-INF/MANIFEST.MF", manifest)
EOF
  usage="$(java -jar "$JAR" --help 2>&1 || true)"
  case "$usage" in *--flink-master*) ;; *) echo "flink.sh: the job server does not start: $usage" >&2; exit 1;; esac
  touch "$JS_DIR/.done"
fi

echo "FLINK_HOME=$(site_flink)"
echo "FLINK_JOB_SERVER_JAR=$JAR"
