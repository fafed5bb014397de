"""lbm.policies"""
