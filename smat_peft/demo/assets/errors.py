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
"""The errors of the demo assets: an asset that cannot be had, fetched, verified or built."""

from __future__ import annotations


class AssetError(RuntimeError):
    """An asset could not be downloaded, verified or built."""


class SourceUnavailableError(AssetError):
    """A domain's source cannot be had on this system; the message says what to install.

    [`build_all`] skips such domains; the single-domain builders raise it.
    """

    def __init__(self, domain: str, message: str):
        super().__init__(message)
        self.domain = domain


class ChecksumError(AssetError):
    """A downloaded archive or a saved asset does not match its recorded SHA-256 checksum."""
