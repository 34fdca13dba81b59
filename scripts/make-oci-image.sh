#!/usr/bin/env bash
# make-oci-image.sh: build an OCI image-layout TAR offline from directories.
#
# Each LAYERDIR becomes one gzip-compressed tar layer (bottom layer first).
# Layers are deterministic: names sorted, owner/group 0 (numeric), every
# mtime set to SOURCE_DATE_EPOCH (default 0), gzip without name/timestamp.
# Whiteouts are plain empty files named `.wh.<name>` inside a layer dir (and
# `.wh..wh..opq` for an opaque directory): the OCI convention, copied as is.
#
# Only coreutils, GNU tar and gzip are used (no python, no jq): the JSON is
# written with printf. The result imports with
#   ctr --address SOCK -n NS images import --snapshotter overlayfs FILE.tar
# and the image's snapshots are named by chainID (printed as CHAIN_ID).
#
# stdout: KEY=VALUE lines (IMAGE, TAG, OUT, MANIFEST_DIGEST, CONFIG_DIGEST,
# CHAIN_ID, DIFF_IDS (space separated, bottom first), LAYER_DIGESTS).

set -euo pipefail

readonly PROG=${0##*/}
readonly MT_INDEX=application/vnd.oci.image.index.v1+json
readonly MT_MANIFEST=application/vnd.oci.image.manifest.v1+json
readonly MT_CONFIG=application/vnd.oci.image.config.v1+json
readonly MT_LAYER=application/vnd.oci.image.layer.v1.tar+gzip

usage() {
  cat <<EOF
Usage: $PROG --name NAME[:TAG] --out FILE.tar [--label KEY=VALUE ...] LAYERDIR [LAYERDIR...]
       $PROG --help

Build an OCI image layout tar from LAYERDIRs (bottom layer first).
  --name NAME[:TAG]   image reference; TAG defaults to "latest". Without a
                      registry part it is normalised like docker does:
                      busybox -> docker.io/library/busybox:latest,
                      me/app:1 -> docker.io/me/app:1; with one
                      (localhost/x, reg.example:5000/x) it is kept as given.
  --out FILE.tar      output file (written atomically).
  --label KEY=VALUE   image config label (config.Labels); repeatable.
  --arch ARCH         config architecture (default amd64).
Whiteouts: create empty files named .wh.<name> in a layer dir.
Environment: SOURCE_DATE_EPOCH (mtime of every entry, default 0).
Prints KEY=VALUE lines: IMAGE, TAG, OUT, MANIFEST_DIGEST, CONFIG_DIGEST,
CHAIN_ID (top layer), DIFF_IDS, LAYER_DIGESTS.
EOF
}

die() {
  printf '%s: %s\n' "$PROG" "$*" >&2
  exit 1
}

# JSON string literal (with quotes) for $1. Refuses control characters other
# than \n, \t, \r, which it escapes.
json_str() {
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\t'/\\t}
  s=${s//$'\r'/\\r}
  [[ $s != *[$'\x01'-$'\x1f']* ]] || die "control character in JSON string: $1"
  printf '"%s"' "$s"
}

sha256_of() {
  local sum
  sum=$(sha256sum -- "$1")
  printf '%s' "${sum%% *}"
}

size_of() {
  stat -c %s -- "$1"
}

# Split NAME[:TAG] into the normalised full reference and the tag.
# Sets globals IMAGE_REF and IMAGE_TAG.
normalise_ref() {
  local ref=$1 repo tag last first
  [[ $ref != *@* ]] || die "digest references are not supported: $ref"
  [[ -n $ref ]] || die "empty --name"
  # The tag is after the last ':' that follows the last '/' (a ':' before
  # a '/' is a registry port).
  last=${ref##*/}
  if [[ $last == *:* ]]; then
    tag=${last##*:}
    repo=${ref%:*}
  else
    tag=latest
    repo=$ref
  fi
  [[ $tag =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "invalid tag: $tag"
  [[ -n $repo ]] || die "invalid name: $ref"
  if [[ $repo == */* ]]; then
    first=${repo%%/*}
    if [[ $first != *.* && $first != *:* && $first != localhost ]]; then
      repo=docker.io/$repo
    fi
  else
    repo=docker.io/library/$repo
  fi
  IMAGE_REF=$repo:$tag
  IMAGE_TAG=$tag
}

# Deterministic uncompressed tar of directory $1 to file $2.
layer_tar() {
  local dir=$1 out=$2
  # Top-level entries (sorted, NUL separated); tar --sort=name orders what is
  # below them. Naming entries relative to DIR ("etc/hostname", not
  # "./etc/hostname") and leaving out "." keeps the layer from setting the
  # rootfs root's mode from the (often 0700 temp) layer dir.
  (cd -- "$dir" && find . -mindepth 1 -maxdepth 1 -printf '%P\0' | LC_ALL=C sort -z) |
    tar -C "$dir" --null --verbatim-files-from -T - \
      --sort=name --format=gnu \
      --owner=0 --group=0 --numeric-owner \
      --mtime="@${SOURCE_DATE_EPOCH:-0}" \
      -cf "$out"
}

main() {
  local name="" out="" arch=amd64
  local -a labels=() dirs=()
  while (($#)); do
    case $1 in
      -h | --help) usage; exit 0 ;;
      --name) (($# >= 2)) || die "--name needs a value"; name=$2; shift ;;
      --name=*) name=${1#--name=} ;;
      --out) (($# >= 2)) || die "--out needs a value"; out=$2; shift ;;
      --out=*) out=${1#--out=} ;;
      --label) (($# >= 2)) || die "--label needs a value"; labels+=("$2"); shift ;;
      --label=*) labels+=("${1#--label=}") ;;
      --arch) (($# >= 2)) || die "--arch needs a value"; arch=$2; shift ;;
      --) shift; dirs+=("$@"); break ;;
      -*) printf '%s: unknown option: %s\n' "$PROG" "$1" >&2; usage >&2; exit 2 ;;
      *) dirs+=("$1") ;;
    esac
    shift
  done
  [[ -n $name && -n $out && ${#dirs[@]} -gt 0 ]] || { usage >&2; exit 2; }
  local d l
  for d in "${dirs[@]}"; do
    [[ -d $d ]] || die "not a directory: $d"
  done
  for l in "${labels[@]}"; do
    [[ $l == ?*=* ]] || die "--label wants KEY=VALUE: $l"
  done
  normalise_ref "$name"

  local work
  work=$(mktemp -d "${TMPDIR:-/tmp}/make-oci-image.XXXXXX")
  # shellcheck disable=SC2064 # expand $work now
  trap "rm -rf -- '$work'" EXIT
  local layout=$work/layout blobs=$work/layout/blobs/sha256
  mkdir -p -- "$blobs"

  # 1. Layers: diff_id = sha256(tar), digest = sha256(tar.gz).
  local -a diff_ids=() layer_digests=() layer_sizes=()
  local i tarf gzf diff dig chain=""
  for i in "${!dirs[@]}"; do
    tarf=$work/layer$i.tar
    gzf=$work/layer$i.tar.gz
    layer_tar "${dirs[i]}" "$tarf"
    diff=$(sha256_of "$tarf")
    gzip -n -c -- "$tarf" >"$gzf"
    rm -f -- "$tarf"
    dig=$(sha256_of "$gzf")
    mv -- "$gzf" "$blobs/$dig"
    diff_ids+=("sha256:$diff")
    layer_digests+=("sha256:$dig")
    layer_sizes+=("$(size_of "$blobs/$dig")")
    # chainID(L0) = diffID(L0); chainID(Ln) = sha256(chainID(Ln-1) + " " + diffID(Ln))
    if [[ -z $chain ]]; then
      chain=sha256:$diff
    else
      chain=sha256:$(printf '%s %s' "$chain" "sha256:$diff" | sha256sum | cut -d' ' -f1)
    fi
  done

  # 2. Config.
  local cfg=$work/config.json sep k v
  {
    printf '{"architecture":%s,"os":"linux","config":{' "$(json_str "$arch")"
    if ((${#labels[@]})); then
      printf '"Labels":{'
      sep=""
      for l in "${labels[@]}"; do
        k=${l%%=*}
        v=${l#*=}
        printf '%s%s:%s' "$sep" "$(json_str "$k")" "$(json_str "$v")"
        sep=,
      done
      printf '}'
    fi
    printf '},"rootfs":{"type":"layers","diff_ids":['
    sep=""
    for d in "${diff_ids[@]}"; do
      printf '%s"%s"' "$sep" "$d"
      sep=,
    done
    printf ']}}'
  } >"$cfg"
  local cfg_dig cfg_size
  cfg_dig=$(sha256_of "$cfg")
  cfg_size=$(size_of "$cfg")
  mv -- "$cfg" "$blobs/$cfg_dig"

  # 3. Manifest.
  local man=$work/manifest.json
  {
    printf '{"schemaVersion":2,"mediaType":"%s",' "$MT_MANIFEST"
    printf '"config":{"mediaType":"%s","digest":"sha256:%s","size":%s},' "$MT_CONFIG" "$cfg_dig" "$cfg_size"
    printf '"layers":['
    sep=""
    for i in "${!layer_digests[@]}"; do
      printf '%s{"mediaType":"%s","digest":"%s","size":%s}' "$sep" "$MT_LAYER" "${layer_digests[i]}" "${layer_sizes[i]}"
      sep=,
    done
    printf ']}'
  } >"$man"
  local man_dig man_size
  man_dig=$(sha256_of "$man")
  man_size=$(size_of "$man")
  mv -- "$man" "$blobs/$man_dig"

  # 4. index.json and oci-layout.
  {
    printf '{"schemaVersion":2,"mediaType":"%s","manifests":[' "$MT_INDEX"
    printf '{"mediaType":"%s","digest":"sha256:%s","size":%s,' "$MT_MANIFEST" "$man_dig" "$man_size"
    printf '"platform":{"architecture":%s,"os":"linux"},' "$(json_str "$arch")"
    printf '"annotations":{"io.containerd.image.name":%s,"org.opencontainers.image.ref.name":%s}}' \
      "$(json_str "$IMAGE_REF")" "$(json_str "$IMAGE_TAG")"
    printf ']}'
  } >"$layout/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"

  # 5. The layout tar itself, deterministic too; written next to OUT, then
  #    renamed so a reader never sees half a file.
  mkdir -p -- "$(dirname -- "$out")"
  local tmp_out
  tmp_out=$(mktemp "$(dirname -- "$out")/.$(basename -- "$out").XXXXXX")
  tar -C "$layout" --sort=name --format=gnu --owner=0 --group=0 --numeric-owner \
    --mtime="@${SOURCE_DATE_EPOCH:-0}" -cf "$tmp_out" oci-layout index.json blobs ||
    { rm -f -- "$tmp_out"; die "tar of the layout failed"; }
  chmod 0644 -- "$tmp_out"
  mv -f -- "$tmp_out" "$out"

  printf 'IMAGE=%s\n' "$IMAGE_REF"
  printf 'TAG=%s\n' "$IMAGE_TAG"
  printf 'OUT=%s\n' "$(realpath -- "$out")"
  printf 'MANIFEST_DIGEST=sha256:%s\n' "$man_dig"
  printf 'CONFIG_DIGEST=sha256:%s\n' "$cfg_dig"
  printf 'CHAIN_ID=%s\n' "$chain"
  printf 'DIFF_IDS=%s\n' "${diff_ids[*]}"
  printf 'LAYER_DIGESTS=%s\n' "${layer_digests[*]}"
}

main "$@"
