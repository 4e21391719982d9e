"""Network constructors named by ModelSpec.network. Backbones come from MONAI."""

from __future__ import annotations

import torch
from monai.networks.nets import ResNet
from torch import nn

from medassist.models.heads import parse_score_head, score_probability


class LocalisingResNet(nn.Module):
    """A MONAI ResNet backbone with two heads on its last feature map.

    - image head: global average pool -> linear -> one logit per image (the finding's score);
    - cell head: 1x1 conv -> one logit per feature-map cell, trained on the annotation masks
      during training so the backbone learns where small findings (fractures) sit.

    ``forward`` returns the image logits shaped (batch, 1) so Captum can attribute them.
    """

    def __init__(
        self,
        *,
        layers: tuple[int, ...] = (2, 2, 2, 2),
        widen_factor: float = 0.5,
        in_channels: int = 1,
        num_outputs: int = 1,
    ) -> None:
        super().__init__()
        self.backbone = ResNet(
            block="basic",
            layers=list(layers),
            block_inplanes=[64, 128, 256, 512],
            spatial_dims=2,
            n_input_channels=in_channels,
            conv1_t_size=7,
            conv1_t_stride=2,
            widen_factor=widen_factor,
            feed_forward=False,
            num_classes=num_outputs,
        )
        channels = int(512 * widen_factor)
        self.image_head = nn.Linear(channels, num_outputs)
        self.cell_head = nn.Conv2d(channels, 1, kernel_size=1)

    @property
    def target_layer(self) -> nn.Module:
        """The last convolutional stage: where GradCAM looks."""
        return self.backbone.layer4

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map (batch, C, H/32, W/32)."""
        b = self.backbone
        x = b.maxpool(b.act(b.bn1(b.conv1(x))))
        return b.layer4(b.layer3(b.layer2(b.layer1(x))))

    def heads(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image logits (batch, outputs) and cell logits (batch, 1, h, w) from the last feature map."""
        pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(feats, 1), 1)
        return self.image_head(pooled), self.cell_head(feats)

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image logits (batch, outputs) and cell logits (batch, 1, h, w)."""
        return self.heads(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_all(x)[0]


NETWORKS: dict[str, type[nn.Module]] = {"localising_resnet": LocalisingResNet}


def build_network(name: str, args: dict) -> nn.Module:
    """Construct a network by its spec name; unknown names raise KeyError listing the known ones."""
    if name not in NETWORKS:
        raise KeyError(f"unknown network {name!r}; known: {sorted(NETWORKS)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
    return NETWORKS[name](**kwargs)


class ScoredNetwork(nn.Module):
    """A localising network with its score head: (N, 1, S, S) -> the finding's probability (N, 1).

    What a MONAI bundle's inferer calls (``medassist.models.export_bundle``): the same numbers as
    ``heads.score_probability`` on ``forward_all``, which triage uses. It holds ``network`` as is,
    so the weights load into ``network`` (the bundle's ``network_def``) with their own keys.
    """

    def __init__(self, network: nn.Module, score_head: str) -> None:
        super().__init__()
        self.network = network
        self.score_head = parse_score_head(score_head).value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, cells = self.network.forward_all(x)
        return score_probability(logits, cells, self.score_head)[:, None]
