"""Independent reference computations that tests check the library against."""
import math

import numpy as np


def direct_nll(x, masks, means, std):
    """−Σ_{c,h,w} log Σ_k m_k N(x | μ_k, σ²) (GENESIS Eq. 3), looping over images and slots,
    float64 numpy. x `[B,C,H,W]`, masks `[B,K,1,H,W]` (probabilities), means `[B,K,C,H,W]`."""
    x, masks, means = (t.detach().double().numpy() for t in (x, masks, means))
    out = []
    for b in range(x.shape[0]):
        density = np.zeros(x.shape[1:])
        for k in range(masks.shape[1]):
            gauss = np.exp(-0.5 * ((x[b] - means[b, k]) / std) ** 2) / (std * math.sqrt(2 * math.pi))
            density += masks[b, k] * gauss
        out.append(-np.log(density).sum())
    return np.array(out)
