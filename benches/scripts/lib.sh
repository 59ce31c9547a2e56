# shellcheck shell=bash
# Shared by the benchmark scripts (sourced, not run).

# ensure_commands BIN=PACKAGE...: installs the Debian packages of the commands that are not on PATH (apt-get,
# through sudo when not root).
ensure_commands() {
    local pair missing=() sudo=()
    for pair in "$@"; do
        command -v "${pair%%=*}" >/dev/null 2>&1 || missing+=("${pair#*=}")
    done
    ((${#missing[@]} > 0)) || return 0
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    echo "+ ${sudo[*]} apt-get update && ${sudo[*]} apt-get install -y ${missing[*]}" >&2
    "${sudo[@]}" apt-get update >&2
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y "${missing[@]}" >&2
}
