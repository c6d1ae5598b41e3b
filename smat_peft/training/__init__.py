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
"""Meta-training and meta-testing of SMAT adapters (and the PMF / pre-trained ProtoNet baselines)."""

from .arguments import MetaTrainingArguments
from .episode_shape import EpisodeShape
from .episodes import Episode, EpisodeSampler, split_classes
from .evaluation import evaluate_episodes
from .trainer import SmatMetaTrainer


__all__ = [
    "Episode",
    "EpisodeSampler",
    "EpisodeShape",
    "MetaTrainingArguments",
    "SmatMetaTrainer",
    "evaluate_episodes",
    "split_classes",
]
