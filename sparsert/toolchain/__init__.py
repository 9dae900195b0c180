"""The external tools, one binding each (nvrtc, ptxas/nvlink, hipcc, the host C++ compiler), run
through one process runner (process.py) and returning one result type (ToolResult)."""
