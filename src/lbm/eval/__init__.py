"""lbm.eval"""
