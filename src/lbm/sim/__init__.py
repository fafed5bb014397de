"""lbm.sim"""
