"""The two CUDA options of ``EfficientAD.infer`` (:class:`InferenceOptions` ``cudnn_fusion``
and ``autoencoder_side_stream``), both OFF by default until a GPU has measured them
(``benchmarks/gpu_table.py`` has a row for each).

``cudnn_fusion``
    Every ``Conv2d`` directly followed by ``ReLU`` in the autoencoder, and every un-pooled
    convolution + bias + ReLU of the PDNs (:func:`pdn_forward`), runs as cuDNN's runtime-fused
    convolution + bias + ReLU (``aten::cudnn_convolution_relu``): one kernel and one pass over
    the output instead of a convolution, a bias pass and a ReLU pass. Pooled PDN layers keep
    the ``conv2d_relu_pool`` op (cuDNN has no fused pooling).
``autoencoder_side_stream``
    At batch 1 the autoencoder (about half of ``infer``'s ~80 launches, independent of the
    PDNs) is enqueued on a side stream; the PDNs run on the current stream meanwhile. Inside a
    CUDA-graph capture (:mod:`.cuda_graphs`) the fork and join become graph
    edges, so the replayed graph runs both branches concurrently.

Both are fields of the options, which key the CUDA graphs: a graph never replays a path other
than the one it was captured with. Both are ignored off CUDA.
Invariants of the side stream:

* Fork: the side stream waits for everything enqueued on the current stream so far (the
  normalised input). Join: the current stream waits for the side stream before returning, so
  everything after ``forward_with_pdns`` (the maps) is ordered after the autoencoder.
* Memory: the input is allocated on the current stream and only read on the side stream; it
  stays alive until after the join, and any later reuse of its block is enqueued on the current
  stream after the join. The autoencoder's own tensors are allocated and freed on the side
  stream (stream-ordered reuse); its output is first used on the current stream after the join,
  and the next fork orders the side stream after those uses. No ``record_stream`` is needed.
* No host synchronisation: waits are events on the device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from efficientad_ext import ops
from efficientad_ext.models.autoencoder import Autoencoder, run_autoencoder
from efficientad_ext.models.pdn import PDN

_SIDE_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    if device not in _SIDE_STREAMS:
        _SIDE_STREAMS[device] = torch.cuda.Stream(device=device)
    return _SIDE_STREAMS[device]


def fused_conv_relu(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """``relu(conv(x))`` as one cuDNN runtime-fused kernel."""
    return torch.ops.aten.cudnn_convolution_relu(
        x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups
    )


def run_sequential(seq: nn.Sequential, x: Tensor, conv_relu: Callable[[Tensor, nn.Conv2d], Tensor]) -> Tensor:
    """``seq(x)`` with every (zero-padded) ``Conv2d`` + ``ReLU`` pair replaced by ``conv_relu``."""
    mods = list(seq)
    i = 0
    while i < len(mods):
        m = mods[i]
        if (
            isinstance(m, nn.Conv2d)
            and m.padding_mode == "zeros"
            and i + 1 < len(mods)
            and isinstance(mods[i + 1], nn.ReLU)
        ):
            x = conv_relu(x, m)
            i += 2
        else:
            x = m(x)
            i += 1
    return x


def fused_forward(ae: Autoencoder, x: Tensor, output_size: tuple[int, int], conv_relu=fused_conv_relu) -> Tensor:
    """:meth:`Autoencoder.forward` (eval mode) with its Conv2d + ReLU pairs fused: the one
    autoencoder forward (:func:`run_autoencoder`) over fused stages (``tests/test_cuda_autoencoder.py``
    checks it equals the module on the CPU with an unfused ``conv_relu``)."""

    def fused(seq: nn.Sequential) -> Callable[[Tensor], Tensor]:
        return lambda t: run_sequential(seq, t, conv_relu)

    return run_autoencoder(x, output_size, fused(ae.encoder), [fused(s) for s in ae.decoder_stages], fused(ae.head))


@torch.no_grad()
def pdn_forward(pdn: PDN, x: Tensor, first: int = 0, conv_relu=fused_conv_relu) -> Tensor:
    """:meth:`PDN.fused_forward` (the layers from index ``first`` on) with every un-pooled
    convolution + bias + ReLU run by ``conv_relu`` (cuDNN's fused kernel); the other layers
    through the ``conv2d_relu_pool`` op. Channels-last in and out, as the fused op."""
    x = x.contiguous(memory_format=torch.channels_last)
    for conv, spec in zip(pdn.convolutions()[first:], pdn.specs[first:]):
        if spec.relu and not spec.pool and conv.bias is not None:
            x = conv_relu(x, conv).contiguous(memory_format=torch.channels_last)
        else:
            x = ops.conv2d_relu_pool(x, conv.weight, conv.bias, spec.padding, spec.relu, spec.pool, spec.pool_padding)
    return x


def _autoencoder(ae: nn.Module, x: Tensor, output_size: tuple[int, int], cudnn_fusion: bool) -> Tensor:
    if cudnn_fusion and x.is_cuda and isinstance(ae, Autoencoder) and not ae.training:
        return fused_forward(ae, x, output_size)
    return ae(x, output_size)


def forward_with_pdns(
    pdns: Callable[[], tuple[Tensor, Tensor]],
    ae: nn.Module,
    x: Tensor,
    output_size: tuple[int, int],
    cudnn_fusion: bool = False,
    side_stream: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(*pdns(), ae(x, output_size))``; with the options above when they are on (CUDA only;
    the side stream at batch 1 only)."""
    if not (side_stream and x.is_cuda and x.shape[0] == 1):
        teacher, student = pdns()
        return teacher, student, _autoencoder(ae, x, output_size, cudnn_fusion)
    main = torch.cuda.current_stream(x.device)
    side = _side_stream(x.device)
    side.wait_stream(main)  # fork: after the input is ready
    with torch.cuda.stream(side):
        autoencoder = _autoencoder(ae, x, output_size, cudnn_fusion)
    teacher, student = pdns()
    main.wait_stream(side)  # join: the maps read the autoencoder's output on `main`
    return teacher, student, autoencoder
