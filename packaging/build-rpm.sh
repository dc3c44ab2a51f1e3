#!/bin/sh
# Build the noarch .rpm of runner from its sdist and print the path of the package.
#
#     packaging/build-rpm.sh [OUTDIR]        (OUTDIR defaults to dist/ in the checkout)
#
# The version is read from runner/__init__.py (its only home) and passed to rpmbuild
# with --define "version X". Works on Fedora/RHEL and on Debian with Debian's `rpm`
# package: there the BuildRequires cannot be met, so rpmbuild runs with --nodeps, and
# DEB_PYTHON_INSTALL_LAYOUT=deb_system makes Debian's python install into /usr, not
# /usr/local. Nothing is written to the checkout except OUTDIR; rpmbuild gets a
# private _topdir that is removed afterwards. Environment: PYTHON (default
# /usr/bin/python3, the interpreter the package is built for; it needs setuptools,
# pip, wheel and configobj).
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here/dist}
python=${PYTHON:-/usr/bin/python3}

version=$(sed -n 's/^__version__ = "\([^"]*\)"$/\1/p' "$here/runner/__init__.py")
if [ -z "$version" ]; then
    echo "build-rpm.sh: no __version__ = \"...\" in $here/runner/__init__.py" >&2
    exit 1
fi
if ! command -v rpmbuild >/dev/null 2>&1; then
    echo "build-rpm.sh: rpmbuild not found (Debian: apt-get install rpm; Fedora: dnf install rpm-build)" >&2
    exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/runner-rpm.XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
top=$work/rpmbuild
mkdir -p "$work/src" "$top/SOURCES" "$top/SPECS"

# The sdist, from a copy of the checkout so that its egg-info and build/ stay out of it.
tar -C "$here" --exclude-vcs --exclude=./dist --exclude=./build --exclude='*.egg-info' \
    --exclude=__pycache__ --exclude=./.pytest_cache --exclude=./.ruff_cache --exclude=./.mypy_cache \
    --exclude=./.venv --exclude=./.state --exclude=./debian -cf - . | tar -C "$work/src" -xf -
(cd "$work/src" && "$python" setup.py -q sdist --dist-dir "$top/SOURCES") >"$work/sdist.log" 2>&1 || {
    cat "$work/sdist.log" >&2
    echo "build-rpm.sh: building the sdist failed" >&2
    exit 1
}
if [ ! -f "$top/SOURCES/runner-$version.tar.gz" ]; then
    echo "build-rpm.sh: the sdist is not runner-$version.tar.gz:" $(ls "$top/SOURCES") >&2
    exit 1
fi
# Files the sdist does not carry (see Source1..7 in runner.spec).
cp "$here/packaging/runner.service" "$here/tasks.d/halt.sh" "$here/man/runner.8" \
    "$here/man/runner-config.1" "$here/man/runner.cfg.5" "$here/packaging/runner.logrotate" \
    "$here/hooks/post-json" "$top/SOURCES/"
cp "$here/runner.spec" "$top/SPECS/"

export DEB_PYTHON_INSTALL_LAYOUT=deb_system
if ! rpmbuild -bb --nodeps \
        --define "_topdir $top" \
        --define "version $version" \
        --define "python3 $python" \
        "$top/SPECS/runner.spec" >"$work/rpmbuild.log" 2>&1; then
    cat "$work/rpmbuild.log" >&2
    echo "build-rpm.sh: rpmbuild failed" >&2
    exit 1
fi

rpm=$(find "$top/RPMS" -name "runner-$version-*.noarch.rpm" | head -n 1)
if [ -z "$rpm" ]; then
    cat "$work/rpmbuild.log" >&2
    echo "build-rpm.sh: rpmbuild made no runner-$version-*.noarch.rpm" >&2
    exit 1
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
cp "$rpm" "$out/"
echo "$out/$(basename "$rpm")"
