#!/usr/bin/env bash
# What `#[idempotent]` costs a release build: a crate of N functions, annotated and not, rebuilt
# in turn (A B A B ...) after touching its source, with each binary's stripped size.
#
#   idem-bench/compile-cost/run.sh [FUNCTIONS=200] [ROUNDS=3] [SHAPE=u64|library]
#
# Shapes: `u64`, every function `async fn fK(k: u64) -> Result<u64, idem::Error>` in the binary
# itself; `library`, what users write more often: each function returns a struct of its own
# (`#[derive(Serialize, Deserialize)]`, in both builds) and lives in a library crate that the
# binary calls (a package's `lib.rs` and `main.rs`, both rebuilt).
#
# Both crates depend on this checkout's `idem` (memory store only) and share one target
# directory, so only the crate itself is rebuilt in each round.
set -euo pipefail
functions=${1:-200}
rounds=${2:-3}
shape=${3:-u64}
case $shape in u64 | library) ;; *) echo "unknown shape \`$shape\`: use u64 or library" >&2; exit 2 ;; esac
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=${COMPILE_COST_DIR:-$repo/target/compile-cost}/$shape
export CARGO_TARGET_DIR=$work/target
mkdir -p "$work"

# One crate: `annotated` (true/false) decides whether each function carries the attribute.
generate() {
    local name=$1 annotated=$2 dir=$work/$1
    mkdir -p "$dir/src"
    cat >"$dir/Cargo.toml" <<TOML
[package]
name = "$name"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
idem = { path = "$repo" }
tokio = { version = "1", features = ["rt"] }
$([ "$shape" = library ] && echo 'serde = { version = "1", features = ["derive"] }')

[profile.release]
strip = true

[workspace]
TOML
    cp "$repo/Cargo.lock" "$dir/Cargo.lock"
    if [ "$shape" = library ]; then
        {
            $annotated && echo "use idem::idempotent;"
            echo "use serde::{Deserialize, Serialize};"
            for i in $(seq 1 "$functions"); do
                echo "#[derive(Debug, Serialize, Deserialize)]"
                echo "pub struct R$i { pub id: u64, pub note: String }"
                $annotated && echo "#[idempotent(key = k)]"
                echo "pub async fn f$i(k: u64) -> Result<R$i, idem::Error> { Ok(R$i { id: k.wrapping_mul($i), note: String::new() }) }"
            done
        } >"$dir/src/lib.rs"
        main "$1::f" ".id" >"$dir/src/main.rs"
    else
        {
            $annotated && echo "use idem::idempotent;"
            for i in $(seq 1 "$functions"); do
                $annotated && echo "#[idempotent(key = k)]"
                echo "async fn f$i(k: u64) -> Result<u64, idem::Error> { Ok(k.wrapping_mul($i)) }"
            done
            main "f" ""
        } >"$dir/src/main.rs"
    fi
}

# A `main` that calls every function (`$1K(K)`, then `$2` on each result) and prints a sum of
# their results, so that none is dropped.
main() {
    echo "fn main() {"
    echo "    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect(\"a runtime\");"
    echo "    rt.block_on(async {"
    echo "        let mut sum = 0u64;"
    for i in $(seq 1 "$functions"); do
        echo "        sum = sum.wrapping_add($1$i(std::hint::black_box($i)).await.expect(\"f$i\")$2);"
    done
    echo "        println!(\"{sum}\");"
    echo "    });"
    echo "}"
}

generate annotated true
generate plain false

build() { # prints the seconds a release rebuild of crate $1 took
    touch "$work/$1/src/"*.rs
    local start end
    start=$(date +%s.%N)
    cargo build --quiet --release --manifest-path "$work/$1/Cargo.toml"
    end=$(date +%s.%N)
    echo "$end - $start" | bc
}

echo "warming up: dependencies and a first build of each crate" >&2
build annotated >/dev/null
build plain >/dev/null
"$CARGO_TARGET_DIR/release/annotated" >/dev/null
"$CARGO_TARGET_DIR/release/plain" >/dev/null

printf 'round\tannotated_s\tplain_s\tratio\n'
for round in $(seq 1 "$rounds"); do
    a=$(build annotated)
    p=$(build plain)
    printf '%s\t%.2f\t%.2f\t%.1f\n' "$round" "$a" "$p" "$(echo "$a / $p" | bc -l)"
done
sa=$(stat -c %s "$CARGO_TARGET_DIR/release/annotated")
sp=$(stat -c %s "$CARGO_TARGET_DIR/release/plain")
printf 'binary bytes: annotated %s, plain %s, per annotated function %s\n' \
    "$sa" "$sp" "$(( (sa - sp) / functions ))"
