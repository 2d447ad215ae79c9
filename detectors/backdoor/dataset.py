"""Dataset-level backdoor detection: which training samples are the poison, from the model's penultimate
representations, class by class. Each function returns one score per sample (higher = more suspicious), for
AUROC against the true poison indices or for removing the top-scored samples.

- :func:`spectral_signature_scores`: Tran, Li and Madry, *Spectral Signatures in Backdoor Attacks*, NeurIPS
  2018. Per class, the centred representations' projection on their top singular vector, squared; the paper
  removes the ``1.5·ε·n`` highest of each class (``ε`` the expected poison share).
- :func:`activation_clustering_scores`: Chen, Carvalho, Baracaldo, Ludwig, Edwards, Lee, Molloy and
  Srivastava, *Detecting Backdoor Attacks on Deep Neural Networks by Activation Clustering*, 2018. Per class,
  the activations reduced to 10 dimensions with ICA and split by 2-means; the smaller cluster is the suspect
  (the paper flags it when it holds at most 35% of the class). The paper's output is the cluster; our score
  is continuous (distance to the larger cluster's centre minus distance to the smaller's), so it ranks.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from advsuite.errors import ConfigError


@torch.no_grad()
def penultimate_features(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """The input of the model's last linear layer, one row per image (the representation both papers use)."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ConfigError("penultimate_features needs a model whose last layer is nn.Linear")
    captured: list[torch.Tensor] = []
    handle = last[-1].register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0].flatten(1).cpu()))
    was = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        for batch in x.split(batch_size):
            model(batch.to(device))
    finally:
        handle.remove()
        model.train(was)
    return torch.cat(captured)


def spectral_signature_scores(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per sample, its class's centred representation projected on the top singular vector, squared."""
    scores = torch.zeros(len(features))
    for c in labels.unique():
        rows = (labels == c).nonzero().flatten()
        if len(rows) < 2:
            continue
        r = features[rows].double()
        r = r - r.mean(0)
        _, _, vh = torch.linalg.svd(r, full_matrices=False)
        scores[rows] = (r @ vh[0]).pow(2).float()
    return scores


def activation_clustering_scores(
    features: torch.Tensor, labels: torch.Tensor, components: int = 10, seed: int = 0
) -> torch.Tensor:
    """Per sample, how much closer it is to its class's smaller 2-means cluster than to the larger one."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import FastICA
    from sklearn.exceptions import ConvergenceWarning

    scores = torch.zeros(len(features))
    for c in labels.unique():
        rows = (labels == c).nonzero().flatten()
        if len(rows) < max(3, components):
            continue
        block = features[rows].double()
        live = block[:, block.std(0) > 1e-8]  # dead ReLU units: constant columns would make the whitening divide by 0
        if live.shape[1] < 2:
            continue
        with warnings.catch_warnings():  # ICA is only the 10-dimensional projection the clustering runs in: an
            warnings.simplefilter("ignore", ConvergenceWarning)  # unmixing that has not converged still is one
            reduced = FastICA(n_components=min(components, live.shape[1]), random_state=seed, max_iter=500,
                              whiten="unit-variance").fit_transform(live.numpy())  # fmt: skip
        kmeans = KMeans(n_clusters=2, n_init=10, random_state=seed).fit(reduced)
        sizes = torch.bincount(torch.as_tensor(kmeans.labels_), minlength=2)
        small = int(sizes.argmin())
        points = torch.as_tensor(reduced)
        centres = torch.as_tensor(kmeans.cluster_centers_)
        distance = torch.cdist(points, centres)
        scores[rows] = (distance[:, 1 - small] - distance[:, small]).float()
    return scores
