"""How homologous attention, Eq. (6) A = softmax(TopK(q kᵀ / √D_h)), is computed.

=============  ======================================================================  =======
module         implementation                                                          paper
=============  ======================================================================  =======
homologous     the dispatcher ``homologous_attention`` (``impl``: sdpa, explicit,       Eq. 6
               triton, flex, fused), the PyTorch selection and the literal reference
triton_select  Triton TopK selection kernel → 0/−inf bias (SDPA) or keep mask (flex)    Eq. 6
triton_fused   Triton kernel: selection, masked softmax and ·V, forward and backward    Eq. 6
=============  ======================================================================  =======
"""
