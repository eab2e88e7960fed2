#!/usr/bin/env python3
"""The onnxruntime peer for our benchmarks (developers only: `pip install onnx onnxruntime safetensors`).

    scripts/onnx_peer.py export WEIGHTS OUT.onnx
        Our safetensors (f32, f16 or int8 + per-channel `_scale`, torchvision names) as an ONNX
        ResNet50: the same arithmetic our `Classifier` runs (batch norms folded into the
        convolutions, int8 dequantized), input `image` (N, 3, H, W) with H and W free, output
        `logits` (N, classes). Nothing of PyTorch is needed.

    scripts/onnx_peer.py bench MODEL.onnx INPUTS_DIR --threads 1,2
        For every `input-<crop>.npy` (N, 3, crop, crop) in INPUTS_DIR: the largest difference of
        onnxruntime's logits from ours (`logits-<crop>.npy`, written by `cargo bench --bench
        inference`), then onnxruntime's forward pass alone, one image at a time, per thread count,
        and in batches of as many images as threads (its best throughput on a folder).
        Prints one JSON object per line: {"crop", "threads", "median_ms", "mean_ms",
        "batched_per_image_ms", "max_logit_diff"}.
"""

import argparse
import glob
import json
import os
import statistics
import sys
import time

import numpy as np

BLOCKS_PER_STAGE = [3, 4, 6, 3]
BN_EPS = 1e-5


def load_float_tensors(path):
    """Every tensor as float32, int8 ones multiplied by their per-output-channel scale."""
    from safetensors.numpy import load_file

    raw = load_file(path)
    tensors = {}
    for name, value in raw.items():
        if name.endswith("_scale"):
            continue
        if value.dtype == np.int8:
            scale = raw[name + "_scale"].astype(np.float32)
            value = value.astype(np.float32) * scale.reshape(-1, *([1] * (value.ndim - 1)))
        tensors[name] = value.astype(np.float32) if value.dtype != np.int64 else value
    return tensors


def folded(tensors, conv, bn):
    """Conv weight and bias with the eval-mode batch norm folded in (as `ConvBn::fold_batch_norm`)."""
    weight = tensors[f"{conv}.weight"]
    scale = tensors[f"{bn}.weight"] / np.sqrt(tensors[f"{bn}.running_var"] + BN_EPS)
    bias = tensors[f"{bn}.bias"] - tensors[f"{bn}.running_mean"] * scale
    return (weight * scale.reshape(-1, 1, 1, 1)).astype(np.float32), bias.astype(np.float32)


class GraphBuilder:
    def __init__(self, tensors):
        self.tensors = tensors
        self.nodes = []
        self.initializers = []

    def const(self, name, array):
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op, inputs, output, **attributes):
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def conv_bn(self, x, conv, bn, stride, padding, relu):
        weight, bias = folded(self.tensors, conv, bn)
        k = weight.shape[-1]
        y = self.node(
            "Conv",
            [x, self.const(f"{conv}.w", weight), self.const(f"{conv}.b", bias)],
            f"{conv}.out",
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[padding] * 4,
        )
        return self.node("Relu", [y], f"{conv}.relu") if relu else y

    def bottleneck(self, x, prefix, stride, has_downsample):
        out = self.conv_bn(x, f"{prefix}.conv1", f"{prefix}.bn1", 1, 0, True)
        out = self.conv_bn(out, f"{prefix}.conv2", f"{prefix}.bn2", stride, 1, True)
        out = self.conv_bn(out, f"{prefix}.conv3", f"{prefix}.bn3", 1, 0, False)
        identity = (
            self.conv_bn(x, f"{prefix}.downsample.0", f"{prefix}.downsample.1", stride, 0, False)
            if has_downsample
            else x
        )
        added = self.node("Add", [out, identity], f"{prefix}.add")
        return self.node("Relu", [added], f"{prefix}.out")


def export(weights, out):
    import onnx
    from onnx import TensorProto, helper

    tensors = load_float_tensors(weights)
    g = GraphBuilder(tensors)
    x = g.conv_bn("image", "conv1", "bn1", 2, 3, True)
    x = g.node("MaxPool", [x], "maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    for stage, blocks in enumerate(BLOCKS_PER_STAGE):
        for block in range(blocks):
            prefix = f"layer{stage + 1}.{block}"
            stride = 2 if block == 0 and stage > 0 else 1
            x = g.bottleneck(x, prefix, stride, f"{prefix}.downsample.0.weight" in tensors)
    x = g.node("GlobalAveragePool", [x], "avgpool")
    x = g.node("Flatten", [x], "features", axis=1)
    fc_w = tensors["fc.weight"].astype(np.float32)
    g.node("Gemm", [x, g.const("fc.w", fc_w), g.const("fc.b", tensors["fc.bias"].astype(np.float32))],
           "logits", transB=1)
    classes = fc_w.shape[0]
    graph = helper.make_graph(
        g.nodes,
        "pneumoscope-resnet50",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by onnxruntime-web as well as onnxruntime
    onnx.checker.check_model(model)
    onnx.save(model, out)
    print(f"wrote {out} ({os.path.getsize(out) / 1e6:.1f} MB, {classes} classes)", file=sys.stderr)


def bench(model_path, inputs_dir, threads, repeats):
    import onnxruntime as ort

    for input_path in sorted(glob.glob(os.path.join(inputs_dir, "input-*.npy"))):
        crop = int(os.path.basename(input_path)[len("input-"):-len(".npy")])
        images = np.load(input_path).astype(np.float32)
        ours = np.load(os.path.join(inputs_dir, f"logits-{crop}.npy"))
        for count in threads:
            options = ort.SessionOptions()
            options.intra_op_num_threads = count
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
            logits = np.concatenate([session.run(None, {"image": image[None]})[0] for image in images])
            times = []
            for _ in range(repeats):
                for image in images:
                    start = time.perf_counter()
                    session.run(None, {"image": image[None]})
                    times.append((time.perf_counter() - start) * 1000)
            # A folder: the same images, `count` per run, the time shared among them.
            batches = [images[i:i + count] for i in range(0, len(images) - count + 1, count)]
            batched = []
            for _ in range(repeats):
                for batch in batches:
                    start = time.perf_counter()
                    session.run(None, {"image": batch})
                    batched.append((time.perf_counter() - start) * 1000 / len(batch))
            print(json.dumps({
                "crop": crop,
                "threads": count,
                "median_ms": statistics.median(times),
                "mean_ms": statistics.fmean(times),
                "batched_per_image_ms": statistics.median(batched),
                "max_logit_diff": float(np.abs(logits - ours).max()),
                "onnxruntime": ort.__version__,
            }), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export")
    p.add_argument("weights")
    p.add_argument("out")
    p = sub.add_parser("bench")
    p.add_argument("model")
    p.add_argument("inputs")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.command == "export":
        export(args.weights, args.out)
    else:
        bench(args.model, args.inputs, [int(t) for t in args.threads.split(",")], args.repeats)


if __name__ == "__main__":
    main()
