"""Front end: weights from files and arrays (canonical float32 CSR), convolution weights and
geometry, tensor files, pruning."""
