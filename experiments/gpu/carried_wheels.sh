# Sourced by gpu/check.sh and gpu/run.sh: wheels carried to a machine without network.
#
#   install_carried_wheels PYTHON MODULE:DIST [MODULE:DIST ...]
#
# For each MODULE that PYTHON cannot import, installs $WHEEL_DIR/DIST-*.whl (default .whl/, filled
# by prepare_wheels.sh) into $CARRIED_SITE (default /tmp/xnorjax_site) and puts that directory
# first on PYTHONPATH. Modules the machine has keep its own versions. Returns pip's status.
install_carried_wheels() {
  local python=$1 pair f
  shift
  local wheels=()
  for pair in "$@"; do
    if ! "$python" -c "import ${pair%%:*}" 2>/dev/null; then
      for f in "${WHEEL_DIR:-.whl}/${pair##*:}"-*.whl; do
        if [ -f "$f" ]; then wheels+=("$f"); fi
      done
    fi
  done
  [ ${#wheels[@]} -eq 0 ] && return 0
  local site=${CARRIED_SITE:-/tmp/xnorjax_site}
  echo "installing ${wheels[*]} into $site"
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "${wheels[@]}" || return
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
}
