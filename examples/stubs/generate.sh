#!/usr/bin/env bash
# Generates client stubs of Switchboard's public API (proto/switchboard/v1) for Python, Java and
# Go with local tools only: no Buf Schema Registry, no remote plugins.
#
#   bash examples/stubs/generate.sh prepare [python|java|go]...   fetch the pinned tools (network)
#   bash examples/stubs/generate.sh [python|java|go]...           generate (offline; all three by default)
#   bash examples/stubs/generate.sh check [python|java|go]...     exit 1, saying what, unless prepared
#   bash examples/stubs/generate.sh python-venv                   print the Python venv's directory
#
# The stubs land in examples/stubs/<language>/gen/ (gitignored): they are made from proto/ every
# time (in CI by test/e2e/partner-bots.test.ts), so they cannot drift from it.
#
# The tools, pinned here and in the files beside this script, go into
# ${SWITCHBOARD_CACHE_DIR:-~/.cache/switchboard}/partners/:
# - Python: a venv with requirements.txt (grpcio-tools, grpcio, protobuf from PyPI, hashes
#   checked); grpcio-tools' protoc writes the messages, the .pyi types and the grpcio clients.
# - Java: protoc and protoc-gen-grpc-java, the executables Maven Central publishes
#   (com.google.protobuf:protoc, io.grpc:protoc-gen-grpc-java), run by buf (the npm devDependency)
#   with buf.gen.java.yaml. `prepare java` also builds examples/bot-java once online, so that
#   Maven has every dependency and plugin of its pom in ~/.m2 and later builds run offline (-o).
# - Go: protoc-gen-go, protoc-gen-go-grpc and protoc-gen-connect-go at the versions go/go.mod
#   pins (its `tool` lines; go.sum is checked against the checksum database), run by buf with
#   buf.gen.go.yaml; the generated package is then compiled in that module.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cache="${SWITCHBOARD_CACHE_DIR:-$HOME/.cache/switchboard}/partners"

# The Maven Central executables. protoc's version is protobuf-java's (examples/bot-java/pom.xml
# uses the same); protoc-gen-grpc-java 1.80.0 is the newest whose linux-x86_64 file Maven Central
# served when this was written, and grpc-java's generated code runs on any newer grpc runtime.
PROTOC_VERSION=4.36.2
GRPC_JAVA_PLUGIN_VERSION=1.80.0

die() {
  echo "generate.sh: $*" >&2
  exit 1
}

# Maven's classifier for this machine (the names protoc and grpc-java publish under).
classifier() {
  local os arch
  case "$(uname -s)" in
    Linux) os=linux ;;
    Darwin) os=osx ;;
    *) die "no protoc executable is published for $(uname -s)" ;;
  esac
  case "$(uname -m)" in
    x86_64 | amd64) arch=x86_64 ;;
    aarch64 | arm64) arch=aarch_64 ;;
    *) die "no protoc executable is published for $(uname -m)" ;;
  esac
  echo "$os-$arch"
}

# Of the contents only (not the paths), so every clone on a machine shares the cache.
hash_of() { cat "$@" | sha256sum | cut -c1-12; }

python_venv() { echo "$cache/python-$(hash_of "$here/python/requirements.txt")"; }
java_tools() { echo "$cache/java-tools-$PROTOC_VERSION-$GRPC_JAVA_PLUGIN_VERSION"; }
go_tools() { echo "$cache/go-tools-$(hash_of "$here/go/go.mod" "$here/go/go.sum")"; }

prepare_python() {
  command -v python3 >/dev/null || die "python3 is missing (Debian: apt-get install python3 python3-venv)"
  local venv
  venv="$(python_venv)"
  [ -x "$venv/bin/python" ] && return
  # Built beside and renamed into place, so an interrupted install never looks ready.
  rm -rf "$venv.building"
  python3 -m venv "$venv.building"
  "$venv.building/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    --require-hashes --only-binary=:all: -r "$here/python/requirements.txt"
  # A venv's scripts name its directory; the interpreter is what we run, by path, so rename is safe.
  mv "$venv.building" "$venv"
}

# Marks a Maven cache that holds everything examples/bot-java/pom.xml needs (per pom content).
maven_marker() { echo "$(java_tools)/maven-resolved-$(hash_of "$root/examples/bot-java/pom.xml")"; }

prepare_java() {
  command -v mvn >/dev/null || die "mvn is missing (Debian: apt-get install maven)"
  command -v java >/dev/null || die "java is missing (Debian: apt-get install openjdk-17-jdk-headless)"
  fetch_java_tools
  if [ ! -e "$(maven_marker)" ]; then
    generate_java
    mvn -q -B -Dstyle.color=never -f "$root/examples/bot-java/pom.xml" package
    touch "$(maven_marker)"
  fi
}

fetch_java_tools() {
  local dir m2 c
  dir="$(java_tools)"
  [ -x "$dir/protoc" ] && [ -x "$dir/protoc-gen-grpc-java" ] && return
  c="$(classifier)"
  m2="$HOME/.m2/repository"
  for artifact in "com.google.protobuf:protoc:$PROTOC_VERSION" "io.grpc:protoc-gen-grpc-java:$GRPC_JAVA_PLUGIN_VERSION"; do
    # Maven checks the file against the repository's checksum (-C: a mismatch is an error).
    mvn -q -B -Dstyle.color=never -C -Dmaven.repo.local="$m2" org.apache.maven.plugins:maven-dependency-plugin:3.11.0:get \
      -Dartifact="$artifact:exe:$c" -Dtransitive=false
  done
  rm -rf "$dir.building"
  mkdir -p "$dir.building"
  install -m 0755 "$m2/com/google/protobuf/protoc/$PROTOC_VERSION/protoc-$PROTOC_VERSION-$c.exe" "$dir.building/protoc"
  install -m 0755 "$m2/io/grpc/protoc-gen-grpc-java/$GRPC_JAVA_PLUGIN_VERSION/protoc-gen-grpc-java-$GRPC_JAVA_PLUGIN_VERSION-$c.exe" \
    "$dir.building/protoc-gen-grpc-java"
  rm -rf "$dir"
  mv "$dir.building" "$dir"
}

prepare_go() {
  command -v go >/dev/null || die "go is missing (https://go.dev/doc/install)"
  local dir
  dir="$(go_tools)"
  if [ ! -x "$dir/protoc-gen-go-grpc" ]; then
    rm -rf "$dir.building"
    mkdir -p "$dir.building"
    # Every module is checked against go.sum and the checksum database, whatever the environment says.
    (cd "$here/go" && env -u GONOSUMDB -u GOPRIVATE -u GOINSECURE GOSUMDB=sum.golang.org GOFLAGS=-mod=readonly \
      GOBIN="$dir.building" go install tool)
    rm -rf "$dir"
    mv "$dir.building" "$dir"
  fi
  # The runtime modules the generated code compiles against (google.golang.org/grpc, connect).
  (cd "$here/go" && env -u GONOSUMDB -u GOPRIVATE -u GOINSECURE GOSUMDB=sum.golang.org go mod download)
}

need() { [ -e "$1" ] || die "$2 is not prepared: run 'bash examples/stubs/generate.sh prepare $3' first (it downloads)"; }

generate_python() {
  local venv
  venv="$(python_venv)"
  need "$venv/bin/python" "the Python venv" python
  rm -rf "$here/python/gen"
  mkdir -p "$here/python/gen"
  # Same output as buf.gen.python.yaml (protoc's python and pyi, grpc_python_plugin), from the
  # protoc inside grpcio-tools, so no separate protoc or plugin is needed.
  (cd "$root" && "$venv/bin/python" -m grpc_tools.protoc -Iproto --python_out="$here/python/gen" \
    --pyi_out="$here/python/gen" --grpc_python_out="$here/python/gen" proto/switchboard/v1/*.proto)
  echo "python: $(find "$here/python/gen" -name '*.py' | wc -l) modules in examples/stubs/python/gen"
}

generate_java() {
  local dir
  dir="$(java_tools)"
  need "$dir/protoc-gen-grpc-java" "protoc-gen-grpc-java" java
  (cd "$root" && PATH="$dir:$PATH" npx --no-install buf generate --template "$here/buf.gen.java.yaml" --output "$here/java")
  echo "java: $(find "$here/java/gen" -name '*.java' | wc -l) classes in examples/stubs/java/gen"
}

generate_go() {
  local dir
  dir="$(go_tools)"
  need "$dir/protoc-gen-go-grpc" "protoc-gen-go-grpc" go
  (cd "$root" && PATH="$dir:$PATH" npx --no-install buf generate --template "$here/buf.gen.go.yaml" --output "$here/go")
  # The stubs are only worth something if they compile against the pinned runtime modules; offline.
  (cd "$here/go" && GOFLAGS=-mod=readonly GOPROXY=off go vet ./gen/...)
  echo "go: $(find "$here/go/gen" -name '*.go' | wc -l) files in examples/stubs/go/gen, compiled"
}

check() {
  local missing=()
  for lang in "$@"; do
    case "$lang" in
      python) [ -x "$(python_venv)/bin/python" ] || missing+=(python) ;;
      java) [ -e "$(maven_marker)" ] || missing+=(java) ;;
      go) [ -x "$(go_tools)/protoc-gen-go-grpc" ] || missing+=(go) ;;
      *) die "unknown language $lang (python, java, go)" ;;
    esac
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "not prepared: ${missing[*]}; run 'bash examples/stubs/generate.sh prepare ${missing[*]}' (it downloads)" >&2
    exit 1
  fi
}

languages() { [ "$#" -gt 0 ] && echo "$@" || echo python java go; }

case "${1:-}" in
  prepare)
    shift
    for lang in $(languages "$@"); do
      case "$lang" in
        python | java | go) "prepare_$lang" ;;
        *) die "unknown language $lang (python, java, go)" ;;
      esac
    done
    ;;
  check)
    shift
    # shellcheck disable=SC2046
    check $(languages "$@")
    ;;
  python-venv) python_venv ;;
  java-tools) java_tools ;;
  *)
    for lang in $(languages "$@"); do
      case "$lang" in
        python | java | go) "generate_$lang" ;;
        *) die "usage: generate.sh [prepare] [python|java|go]... | python-venv | java-tools" ;;
      esac
    done
    ;;
esac
