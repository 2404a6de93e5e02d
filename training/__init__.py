"""Training cosine-similarity SSL encoders (SimCLR, SimSiam, BYOL, MoCo v2/v3) with the paper's
interventions on the embedding norm: weight decay, cut-initialisation and GradScale
(Draganov et al., ICML 2025). Writes normprobe checkpoints (Contract 1).

    normprobe train --config training/configs/simclr_cifar10.yaml --set epochs=10 out_dir=runs/x

training imports normprobe; normprobe never imports training.
"""
