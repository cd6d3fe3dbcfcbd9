# Sourced by the benchmark scripts that run a peer or a tool from Debian's
# packages: on a fresh machine they are missing, and a script that starts
# nginx without it fails later with a message about a port, not about
# nginx.
#   need PROGRAM PACKAGE
need() {
	command -v "$1" >/dev/null 2>&1 || { echo "${0##*/}: needs $1 (apt-get install $2)" >&2; exit 1; }
}
