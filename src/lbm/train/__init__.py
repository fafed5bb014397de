"""lbm.train"""
