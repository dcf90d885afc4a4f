"""PyTorch golden model of ternopu: every number the overlay computes, defined bit for bit.

Modules
-------
errors     exception types and the NaN/Inf policy shared by every unit
bitnet     BitNet b1.58 absmean ternary weights, absmax INT8 activations, output rescale
tlmm       ternary table-lookup matmul: 5-bit keys, 14-entry tables, key packing
bfp        block floating point from FP16/BF16
dsp        DSP48E2 / DSP58 arithmetic and multi-product packing with exact correction
pe         PE-array modes (BFP x INT4, BFP x BFP, BFP x KIVI) as the hardware computes them
int4       GPTQ / AWQ packed INT4 tensors, RTN group quantizer, zero-folded dequant math
kivi       KIVI 2/4-bit KV cache quantization and LSB-first packing
nonlinear  RMSNorm, online softmax, exp/rsqrt approximations, ReLU^2, SiLU, RoPE
config     model configurations and presets (BitNet b1.58 2B4T, Llama-2-7B, tiny)
model      decoder layers and whole models (BitNet b1.58, INT4 Llama-2), routers, KV reuse
reference  float reference models and accuracy metrics
loaders    HF-format, GPTQ and AWQ checkpoint loaders
"""
