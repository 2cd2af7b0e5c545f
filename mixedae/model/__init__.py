"""The paper: the one ViT and every MixedAE concept, each in its own module (nothing here reads
files or knows about training runs).

======================  ==============================================  ===============
module                  concept                                         paper
======================  ==============================================  ===============
vit                     the one ViT (encoder, classifier, mm backbone)  §4.1, App. B
pos_embed               2-D / 1-D sine-cosine embeddings                App. B
mixing                  mixing masks, mixing, unmixing with [MASK]      Eq. 1, 2, 3
segment_embedding       segment embeddings                              §3.2, App. B
attention/              softmax(TopK(q kᵀ/√d)) (reference, SDPA,        Eq. 6, Fig. 6
                        Triton), TopK accuracy; one dispatcher
homologous_contrastive  homologous contrastive loss                     Eq. 7
decoder                 MAE decoder                                     Eq. 3–4
mixed_autoencoder       MixedAE / MAE / baselines, L_recon + λ L_HomoCon  Eq. 4, 8
======================  ==============================================  ===============
"""
