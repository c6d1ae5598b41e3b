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
"""The card domain `cards`: the 52 playing cards of the SVG decks of Debian/Ubuntu card-game packages."""

from __future__ import annotations

import logging
from pathlib import Path

from ..archives import SourceTree
from ..dataset_io import Row
from ..errors import AssetError
from ..images import fit_square, on_white, png_bytes
from ..parallel import parallel_concat
from ..registry import DomainSource, register
from ..sources import SourceArchive, debian_licenses, fetch_debs, read_debs, require_debian
from ..svg import check_librsvg, default_renderer


logger = logging.getLogger(__name__)


CARD_PACKAGES: tuple[str, ...] = ("gnome-cards-data", "aisleriot", "kdegames-card-data-kf5")
CARD_SIZE: int = 96
SUITS: tuple[str, ...] = ("club", "diamond", "heart", "spade")
RANKS: tuple[str, ...] = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "jack", "queen", "king")
_RANK_NAMES = {"1": "ace"}
CARD_DECKS_EXCLUDED: frozenset[str] = frozenset({
    # near-duplicates of another deck (bitmap, 4-colour, same art under another name)
    "anglo_bitmap", "gnomangelo_bitmap", "anglo_modern_4_color", "neoclassical_4_color", "Атласные",
    "atlasnye_skat", "svg-dondorf", "svg-gm-paris", "svg-nicu-ornamental",
    # decks librsvg cannot render (no page size)
    "svg-konqi-modern", "svg-xskat-french",
    # ranks written as hexadecimal digits on punched cards (ace = 0): not recognisable as the standard cards
    "svg-future",
})


def card_name(suit: str, rank: str) -> str:
    """Class name of a card, e.g. `card_name("club", "1") == "ace of clubs"`.

    Example:
        >>> card_name("heart", "queen")
        'queen of hearts'
    """
    return f"{_RANK_NAMES.get(rank, rank)} of {suit}s"


def card_decks(tree: SourceTree) -> dict[str, tuple[str, str]]:
    """Deck name → (path of its SVG file, id style) in a tree holding aisleriot (`club_1`) and KDE (`1_club`) decks.

    Example:
        >>> card_decks(SourceTree({"usr/share/aisleriot/cards/bonded.svgz": b""}))
        {'bonded': ('usr/share/aisleriot/cards/bonded.svgz', 'suit_rank')}
    """
    decks = {}
    for path in sorted(tree.files):
        if not path.endswith((".svg", ".svgz")):
            continue
        parts = path.split("/")
        if path.startswith("usr/share/aisleriot/cards/") and len(parts) == 5:
            decks[parts[-1].rsplit(".", 1)[0]] = (path, "suit_rank")
        elif path.startswith("usr/share/carddecks/svg-") and len(parts) == 5:
            decks.setdefault(parts[3], (path, "rank_suit"))
    return {k: v for k, v in decks.items() if k not in CARD_DECKS_EXCLUDED}


def _card_job(job: tuple[str, bytes, str]) -> list[Row]:
    deck, data, style = job
    renderer = default_renderer()
    try:
        handle = renderer.load(data)
    except AssetError as exc:
        logger.warning("cards: deck %s left out: %s", deck, exc)
        return []
    rows = []
    try:
        for suit in SUITS:
            for rank in RANKS:
                element = f"{suit}_{rank}" if style == "suit_rank" else f"{rank}_{suit}"
                if not renderer.has_element(handle, element):
                    continue
                try:
                    image = renderer.render_element(handle, element, CARD_SIZE)
                except AssetError as exc:
                    logger.info("cards: %s/%s: %s", deck, element, exc)
                    continue
                rows.append(Row(png_bytes(fit_square(on_white(image), CARD_SIZE)), card_name(suit, rank), deck))
    finally:
        renderer.close(handle)
    if len(rows) < len(SUITS) * len(RANKS):
        logger.warning("cards: deck %s left out (%d of 52 cards rendered)", deck, len(rows))
        return []
    return rows


def card_rows(tree: SourceTree, progress: bool = False) -> list[Row]:
    """Rows of the card domain: each of the 52 cards of each complete deck, rendered with librsvg; class = card
    (e.g. "queen of hearts"), instance = deck.

    Example:
        >>> rows = card_rows(SourceTree.from_dir("/"))  # doctest: +SKIP
    """
    jobs = [(deck, tree.files[path], style) for deck, (path, style) in card_decks(tree).items()]
    return parallel_concat(_card_job, jobs, desc="cards", progress=progress)


def _card_source() -> DomainSource:
    def rows(downloads: Path, progress: bool) -> tuple[list[Row], list[SourceArchive], dict[str, bytes]]:
        require_debian("cards", CARD_PACKAGES)
        check_librsvg("cards")
        archives = fetch_debs(CARD_PACKAGES, downloads, domain="cards")
        tree = read_debs(archives, lambda p: p.endswith((".svg", ".svgz")) and (
            p.startswith("usr/share/aisleriot/cards/") or p.startswith("usr/share/carddecks/svg-")),
            progress, "reading card decks")
        return card_rows(tree, progress), archives, debian_licenses(tree, archives)

    return DomainSource(
        name="cards", title="Playing cards (52 cards across deck styles)",
        description="The 52 cards of a French-suited deck (class = card, e.g. 'queen of hearts') in many deck "
                    "styles (instance = deck), rendered from the SVG card decks of AisleRiot (gnome-cards-data, "
                    "aisleriot) and KDE (kdegames-card-data-kf5); near-duplicate decks left out.",
        registry="debian", packages=CARD_PACKAGES, license_id="other",
        license_text="Card decks under their own licences: AisleRiot decks GPL-3+ (some LGPL/GPL-2+ or public "
                     "domain), KDE card decks GPL-2+/LGPL-2+ and others; the `instance` column names the deck. Exact "
                     "terms and authors are in LICENSES/.",
        rows=rows, image_size=f"{CARD_SIZE} × {CARD_SIZE} RGB (card centred on white)",
    )


register(_card_source())
