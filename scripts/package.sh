#!/usr/bin/env bash
# Builds the Debian package: target/debian/snarf_VERSION_ARCH.deb (its path is the last line
# printed). The release binary is built (a no-op when it is fresh), the man pages, shell
# completions and packaged systemd units are generated from it into target/deb-assets/, then
# `cargo deb --no-build` packs them with the metadata in Cargo.toml. cargo-deb is installed
# once into ${SNARF_TOOL_CACHE:-$HOME/.cache/snarf-tools} when missing, so later runs find it.
set -euo pipefail
cd "$(dirname "$0")/.."

tools=${SNARF_TOOL_CACHE:-$HOME/.cache/snarf-tools}
export PATH="$tools/bin:$PATH"
if ! cargo deb --version >/dev/null 2>&1; then
  echo "package.sh: installing cargo-deb into $tools (once)" >&2
  cargo install --locked --root "$tools" cargo-deb
fi

cargo build --release --locked
snarf=target/release/snarf
assets=target/deb-assets
rm -rf -- "$assets"
mkdir -p -- "$assets/man" "$assets/completions" "$assets/systemd"
"$snarf" generate man "$assets/man" >/dev/null
"$snarf" generate completions bash >"$assets/completions/snarf"
"$snarf" generate completions zsh >"$assets/completions/_snarf"
"$snarf" generate completions fish >"$assets/completions/snarf.fish"
# The units in mount-helpers/ name a hand-installed snarf under /usr/local; the package's
# live under /usr.
for unit in snarf-mount@.service snarf-backup@.service snarf-backup@.timer; do
  sed -e 's|/usr/local/bin/snarf|/usr/bin/snarf|g' \
      -e 's|/usr/local/share/snarf/|/usr/share/snarf/|g' \
      -- "mount-helpers/$unit" >"$assets/systemd/$unit"
done
# mount -t snarf finds the helper as mount.snarf.
ln -s mount.fuse.snarf "$assets/mount.snarf"

# cargo deb prints the package's path as its last line of output.
deb=$(cargo deb --no-build --locked | tail -n 1)
[ -f "$deb" ] || { echo "package.sh: cargo deb wrote no package (it said: $deb)" >&2; exit 1; }
echo "$deb"
